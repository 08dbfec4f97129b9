"""`python -m rlaif.rehearsal.openai_server --port 0 --state-dir DIR`: the server as a process."""

from rlaif.rehearsal.openai_server.server import main

main()
