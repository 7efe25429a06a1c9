# The emulated board's boot script, run by the unix port as
#   micropython -X heapsize=H -i start.py RIG_SOCKET TOKEN
# (-i: the REPL follows). The work is in bootseq.py, which also takes its own
# name out of the REPL's globals again, so they are clean as a board's are.
from board import bootseq  # type: ignore[import-not-found]  # the VM's path, not mypy's

bootseq.start(globals())  # the last statement: Ctrl-C after it is the REPL's
