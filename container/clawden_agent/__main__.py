"""`python -m clawden_agent`: the agent container's main process (under tini)."""

from .loop import main

if __name__ == "__main__":
    main()
