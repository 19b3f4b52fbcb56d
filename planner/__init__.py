"""Decides and acts: plans jobs on the price book, launches and supervises them. Never imports torch."""
__version__ = "0.1.0"
