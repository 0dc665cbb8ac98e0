"""The driver's training progress bar: fed by whatever rank 0 last reported, quiet off a terminal."""

from __future__ import annotations

import io

from tasks.train_progress import TrainProgress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_moves_with_the_reported_step_loss_and_tokens_per_second():
    reports = iter([{}, {"step": 3, "total_steps": 8, "loss_total": 2.5, "tokens_per_second": 1234.4}])
    out = FakeTTY()
    progress = TrainProgress(lambda: next(reports), file=out)
    progress.poll()  # nothing reported yet: the bar stays at 0
    assert progress.bar.n == 0
    progress.poll()
    progress.bar.refresh()
    assert (progress.bar.n, progress.bar.total) == (3, 8)
    line = out.getvalue().rsplit("\r", 1)[-1]
    assert "3/8" in line and "loss=2.5" in line and "tok/s=1234" in line
    progress.bar.close()


def test_quiet_when_not_a_terminal_and_a_failing_fetch_is_ignored():
    out = io.StringIO()  # isatty() is False

    def broken():
        raise TimeoutError("actor gone")

    with TrainProgress(broken, file=out, interval=0.01) as progress:
        progress.poll()
    assert out.getvalue() == "" and progress.bar.disable
