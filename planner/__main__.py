"""`python -m planner ...` runs the command line."""
from planner.interface.cli import app

app()
