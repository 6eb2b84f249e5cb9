"""What the reliability suite did, printed at the end of the run (issue 5 asks for the counts): the `tally`
fixture hands this counter to tests, and archive_checks adds the records it checked."""

from collections import Counter

TALLY: Counter = Counter()
