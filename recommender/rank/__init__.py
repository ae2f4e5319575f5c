"""Request-time ranking: the related-list signals (``signals``), the
rankers (``related``, ``search``) and a list as a request gets it, rules and
all (``lists``). The combiner they score with is ``recommender.ranker``;
fitting it is ``recommender.training``."""
