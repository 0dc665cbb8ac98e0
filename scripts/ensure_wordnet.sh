#!/usr/bin/env bash
# Make WordNet 3.0 available offline. Order: an NLTK data dir that already has corpora/wordnet
# (a user who ran nltk.download('wordnet')), then Debian's wordnet-base in /usr/share/wordnet, installed here if absent.
set -euo pipefail
for d in "${NLTK_DATA:-}" "$HOME/nltk_data" /usr/share/nltk_data /usr/local/share/nltk_data /usr/lib/nltk_data; do
  if [ -n "$d" ] && { [ -d "$d/corpora/wordnet" ] || [ -f "$d/corpora/wordnet.zip" ]; }; then exit 0; fi
done
[ -f /usr/share/wordnet/data.noun ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "WordNet not found: installing Debian packages wordnet-base wordnet-sense-index" >&2
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends wordnet-base wordnet-sense-index >/dev/null
