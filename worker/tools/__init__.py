"""What only the command line uses: the running worker imports none of it.

watch, demo, explain, shadow, ask (request_client), rule cases and coverage, replay, and
rule deploys and rollbacks (rule_deploy).
"""
