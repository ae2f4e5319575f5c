"""Quality against labelled data (``recommender eval``).

* ``runs``: the served lists, as a widget gets them, and the baselines,
  ranked to the same depth in the same run; the reports.
* ``metrics``: story MAP and the other measures, and copies decided from
  the text alone; the ranker's training (``recommender.training``) uses them too.
* ``baselines``: TF-IDF cosine, Okapi BM25 and SQLite's FTS5 BM25.
"""
