"""Editorial rules: pins, blocks, boosts and buries, kept in the store.

Rules name articles by their public ``id`` (not the internal doc_id), so they
survive a reindex, a model change and a re-ingest. They apply at query time:

* ``pin``: show article ``target`` in ``article``'s related list at
  ``position`` (1 = first); the other slots are filled automatically.
* ``block``: never show ``target`` in ``article``'s list, or, with no
  ``article``, in any list or search result. A block beats every other rule,
  pins included.
* ``boost`` / ``bury``: move an article, a section or a tag up or down by
  ``weight`` standard deviations of the list's score, in ``article``'s list or
  (with no ``article``) everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from recommender.errors import InvalidInput

KINDS = ("pin", "block", "boost", "bury")
TARGET_TYPES = ("article", "section", "tag")
MAX_POSITION = 100
MAX_WEIGHT = 10.0
MAX_RULES = 100_000
"""Rules a store keeps, all lists together: rules are resolved to rows once
per published view (a few hundred milliseconds at this count), not per request."""
MAX_LIST_RULES = 1_000
"""Rules for one article's list (pins, blocks, boosts): read and applied per request."""


@dataclass(frozen=True)
class Rule:
    kind: str
    target: str
    """An article id, or a section or tag name (see ``target_type``)."""
    article: str | None = None
    """The article whose related list the rule is for; None: every list."""
    target_type: str = "article"
    position: int | None = None
    weight: float | None = None
    note: str = ""
    id: int | None = None
    created_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def article_ids(self) -> list[str]:
        """The articles the rule names (its list's article, an article target):
        they must exist when the rule is added."""
        ids = [self.article, self.target if self.target_type == "article" else None]
        return list(dict.fromkeys(i for i in ids if i))

    @property
    def signed_weight(self) -> float:
        weight = self.weight if self.weight is not None else 1.0
        return -weight if self.kind == "bury" else weight


def parse_rule(data: dict[str, Any]) -> Rule:
    """Validate a rule from the API, the CLI or a file; raise InvalidInput."""
    if not isinstance(data, dict):
        raise InvalidInput("a rule must be an object")
    unknown = set(data) - {"kind", "target", "article", "target_type", "position", "weight", "note"}
    if unknown:
        raise InvalidInput(f"unknown rule field(s): {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    kind = data.get("kind")
    if kind not in KINDS:
        raise InvalidInput(f"'kind' must be one of {', '.join(KINDS)}", field="kind")
    target_type = data.get("target_type") or "article"
    if target_type not in TARGET_TYPES:
        raise InvalidInput(f"'target_type' must be one of {', '.join(TARGET_TYPES)}", field="target_type")
    target = _text(data.get("target"), "target", required=True)
    article = _text(data.get("article"), "article", required=kind == "pin")
    note = _text(data.get("note"), "note") or ""
    position, weight = data.get("position"), data.get("weight")
    if kind == "pin":
        if target_type != "article":
            raise InvalidInput("a pin shows one article: 'target_type' must be 'article'", field="target_type")
        if isinstance(position, bool) or not isinstance(position, int) or not 1 <= position <= MAX_POSITION:
            raise InvalidInput(f"a pin needs 'position', a whole number from 1 to {MAX_POSITION}", field="position")
        if target == article:
            raise InvalidInput("an article cannot be pinned to its own list", field="target")
    elif position is not None:
        raise InvalidInput("only pins have a 'position'", field="position")
    if kind == "block" and target_type != "article":
        raise InvalidInput("a block names one article: 'target_type' must be 'article'", field="target_type")
    if kind in ("boost", "bury"):
        if weight is None:
            weight = 1.0
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= MAX_WEIGHT:
            raise InvalidInput(f"'weight' must be a number above 0 and at most {MAX_WEIGHT:g}", field="weight")
        weight = float(weight)
    elif weight is not None:
        raise InvalidInput("only boosts and buries have a 'weight'", field="weight")
    assert target is not None  # required above
    return Rule(kind=kind, target=target, article=article, target_type=target_type, position=position,
                weight=weight, note=note)


def _text(value: Any, name: str, *, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise InvalidInput(f"'{name}' is required", field=name)
        return None
    if not isinstance(value, str) or len(value) > 512 or any(ord(c) < 32 for c in value):
        raise InvalidInput(f"'{name}' must be a string of at most 512 printable characters", field=name)
    return value.strip()


@dataclass(frozen=True)
class ListRules:
    """The rules that apply to one list, ready for ranking."""

    pins: tuple[Rule, ...] = ()
    blocked: frozenset[str] = frozenset()
    """Article ids never shown in this list."""
    boosts: tuple[Rule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pins or self.blocked or self.boosts)

    @classmethod
    def of(cls, rules: list[Rule], *, for_search: bool = False) -> ListRules:
        pins = tuple(sorted((r for r in rules if r.kind == "pin" and not for_search), key=lambda r: (r.position, r.id or 0)))
        blocked = frozenset(r.target for r in rules if r.kind == "block")
        boosts = tuple(r for r in rules if r.kind in ("boost", "bury"))
        return cls(tuple(p for p in pins if p.target not in blocked), blocked, boosts)
