"""Domain errors. Each carries the HTTP status the service answers with."""

from __future__ import annotations


class RecommenderError(Exception):
    status_code = 500
    code = "internal_error"
    public_message: str | None = None
    """What the HTTP API says instead of the message (which may name paths or
    settings); None: the message is safe to show. The message is logged."""


class ConfigError(RecommenderError):
    status_code = 500
    code = "config_error"
    public_message = "the server is misconfigured; see its log"


class InvalidInput(RecommenderError):
    status_code = 422
    code = "invalid_input"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class ArticleNotFound(RecommenderError):
    status_code = 404
    code = "article_not_found"

    def __init__(self, article_id: str):
        super().__init__(f"no article with id {article_id!r}")
        self.article_id = article_id


class RuleNotFound(RecommenderError):
    status_code = 404
    code = "rule_not_found"

    def __init__(self, rule_id: int):
        super().__init__(f"no rule with id {rule_id}")


class IndexNotFound(RecommenderError):
    status_code = 503
    code = "index_not_ready"
    public_message = "no index has been published yet"


class IndexMismatch(RecommenderError):
    """The published index was built with another model or settings."""

    status_code = 503
    code = "index_mismatch"
    public_message = "the published index does not match the server's model or settings; see its log"


class IndexDamaged(RecommenderError, ValueError):
    """A file of the index folder fails verification (its size, its checksum,
    its shape or bounds): what names it is never served."""

    status_code = 503
    code = "index_damaged"
    public_message = "a file of the published index is damaged; see the server's log"

    def __init__(self, message: str, file: str | None = None, *, public: str | None = None):
        super().__init__(message)
        self.file = file
        if public is not None:  # names versions and files only, never a path
            self.public_message = public
