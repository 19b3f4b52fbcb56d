"""A simulated cloud that really runs the boxes: fake RunPod (REST v2 pods, SSE logs, the GraphQL price
query) and fake Vast.ai (bundles, PUT asks, v1 instance listing, request_logs; v0 listing answers 410) on
127.0.0.1, each create starting the box's command as a local subprocess with only the environment the
create request carried, and S3 on loopback (moto in server mode). Written from the documented
behaviour in docs/providers/runpod.md and docs/providers/vast.md (sections cited in each module).
"""
