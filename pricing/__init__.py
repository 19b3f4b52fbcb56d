"""The price book: GPU offers from RunPod and Vast.ai, normalized and stored. Knows nothing of jobs."""
