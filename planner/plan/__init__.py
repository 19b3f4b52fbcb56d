"""Deciding: what a job needs, which offer finishes it cheapest, what it may spend, the job graphs.

May import pricing, the torch-free parts of jobs (spec, storage), planner.config and planner.records;
never planner.run or planner.interface.
"""
