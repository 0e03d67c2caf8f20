import signal

from .cli import main

rc = main()
if rc in (128 + signal.SIGINT, 128 + signal.SIGTERM):  # stopped, its workers too: on the way out, a further
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C would only break the exit's cleanup into tracebacks
raise SystemExit(rc)
