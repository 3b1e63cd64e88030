"""Ranking quality: full-ranking metrics, the evaluation loop, and the history a ranking excludes.

- `metrics`: HR, NDCG, MRR, AUC from the target's rank;
- `evaluate`: scores every item for the validation/test queries and ranks the target;
- `seen`: the items a user has interacted with, excluded from rankings and top-k.
"""
