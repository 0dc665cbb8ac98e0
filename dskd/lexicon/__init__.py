"""Lexicon: synonym/antonym word pairs (WordNet, Wiktionary) mapped to teacher token ids."""
