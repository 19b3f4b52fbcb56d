"""Acting: refreshing the price book, creating jobs, launching them on backends and supervising them.

May import planner.plan and everything below it; never planner.interface.
"""
