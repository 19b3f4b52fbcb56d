"""What people and scripts touch: the Typer CLI, the HTTP API and dashboard, their shared views, plots.

May import everything below it (planner.run, planner.plan, pricing, jobs); nothing imports it.
"""
