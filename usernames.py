"""Which usernames are one account, and which look like one: the keys of a name's uniqueness.

Two rules keep one person's name from being worn by another:

- **Normalised names** (``normalize_username``): ``Marko``, ``marko`` and ``ｍａｒｋｏ`` are one
  account; logins find accounts by this key.
- **Look-alike names** (``lookalike_keys``, issue #18): ``paypal`` and ``раураӏ`` (all Cyrillic),
  ``ooo`` and ``οοο`` (Greek), ``admin`` and ``admın``/``ADMİN`` cannot both be accounts. A name's keys
  are UTS #39 skeletons, computed with ICU's ``SpoofChecker`` (PyICU; ICU maintains Unicode's
  ``confusables.txt``), and two names collide when their key sets meet. The store holds every
  account's keys in a unique index, so a new name is refused (``409``) without a scan, with one
  winner under concurrency. Accounts that already collided before the rule keep working.

The standard's data alone misses some pairs, hence these folds around the skeleton:

- **Case.** A skeleton keeps case (``АВС`` → ``ABC`` but ``авс`` → ``aʙc``), while accounts ignore it;
  so the keys are the skeleton of the case-folded name, and the skeleton of the typed name, each
  then case-folded and skeletonised again until it settles (``0`` → ``O`` → ``o``): ``АВС``
  collides with ``ABC`` = ``abc``, and ``user0`` with ``userO`` = ``usero``.
- **Accents.** Generic combining marks (Unicode's "Inherited" script: accents, dots, overlays) are
  removed from the name before its skeleton is taken, after NFD: the dot of ``İ`` (the skeleton of
  ``İ`` keeps it as ``l̇``), and ``josé`` is ``jose``. Marks proper to a script (Devanagari vowel
  signs, Cyrillic titlo) stay: there they tell names apart. Marks the skeleton itself produces stay
  too (``Θ`` → ``O̵``: not an ``O``).
- **Letters.** Cyrillic small palochka ``ӏ`` (U+04CF) is drawn as ``l`` but the data maps it to ``i``
  (its capital ``Ӏ`` already maps to ``l``): it is read as ``l``. Dotless ``ı`` already maps to ``i``.

And a name written wholly in another script whose key is plain ASCII passes for a Latin name
(``раураӏ`` → ``paypal``, ``οοο`` → ``ooo``, ``АВС`` → ``ABC``): ``imitated_latin`` names it, and
registration refuses it with a ``422`` even when the Latin name is free, whereas ``иван`` (→ ``ᴎʙaʜ``)
or ``ζωη`` look like no Latin name and register. The keys depend on ICU's data: a newer ICU may
map more letters; accounts keep their stored keys until a migration recomputes them.
"""

import re
import string
import unicodedata
from collections.abc import Callable

import icu
from confusable_homoglyphs import categories

_CHECKER = icu.SpoofChecker()
_READ_AS = str.maketrans({"\u04cf": "l"})  # Cyrillic small palochka: drawn as l, mapped to i by the data
# Most names are plain ASCII, whose skeleton is a per-character mapping (UTS #39 maps code point by
# code point after NFD, and ASCII is its own NFD): a translation table computes it in a fraction of
# the time, which counts when the JSON store indexes 100,000 accounts at start-up.
_PLAIN = re.compile(r"[A-Za-z0-9_.-]*")
_PLAIN_SKELETON = str.maketrans({c: _CHECKER.getSkeleton(0, c) for c in string.ascii_letters + string.digits + "_.-"})


def normalize_username(username: str) -> str:
    """The key for uniqueness: ``Marko``, ``marko`` and ``ｍａｒｋｏ`` are one account."""
    return unicodedata.normalize("NFKC", username).casefold()


def _skeleton(text: str) -> str:
    return _CHECKER.getSkeleton(0, text)  # the type argument is ignored since ICU 58


def _bare(text: str) -> str:
    """``text`` in NFD without generic combining marks, with the letters the data misreads fixed."""
    if text.isascii():  # most names: nothing to remove, nothing to fix
        return text
    text = unicodedata.normalize("NFD", text)
    text = "".join(c for c in text if not (unicodedata.category(c)[0] == "M" and categories.alias(c) == "INHERITED"))
    return text.translate(_READ_AS)


def lookalike_keys(username: str) -> frozenset[str]:
    """The keys under which ``username`` is unique: two names that share one look alike."""
    if _PLAIN.fullmatch(username):  # the same keys as _keys gives, faster (NFKC and casefold are lower())
        return frozenset((username.translate(_PLAIN_FOLDED), username.translate(_PLAIN_TYPED)))
    return _keys(username)


def _keys(username: str) -> frozenset[str]:
    return frozenset((_settled(_bare(normalize_username(username)), _skeleton, normalize_username),
                      _settled(_skeleton(_bare(username)), _skeleton, normalize_username)))


def _plain_skeleton(text: str) -> str:
    return text.translate(_PLAIN_SKELETON)


def _settled(text: str, skeleton: Callable[[str], str], fold: Callable[[str], str]) -> str:
    """``text`` case-folded and skeletonised until neither changes it (at most a few rounds): a
    skeleton may bring back capitals (``0`` → ``O``), which accounts do not tell from small ones."""
    for _ in range(4):
        settled = skeleton(fold(text))
        if settled == text:
            break
        text = settled
    return text


def _plain_tables() -> tuple[dict[int, str], dict[int, str]]:
    """Both keys of a plain name, settled character by character, as two translation tables.

    The plain skeleton and ``lower`` both map a character at a time, so settling a name is
    settling each of its characters: one ``translate`` per key instead of a few rounds of two
    (the JSON store computes the keys of every account at start-up). Each entry is checked to
    be settled, so the tables give exactly what the rounds give."""
    folded, typed = {}, {}
    for c in string.ascii_letters + string.digits + "_.-":
        folded[ord(c)] = _settled(c.lower(), _plain_skeleton, str.lower)
        typed[ord(c)] = _settled(c.translate(_PLAIN_SKELETON), _plain_skeleton, str.lower)
    for key in (*folded.values(), *typed.values()):
        if _plain_skeleton(key.lower()) != key:
            raise RuntimeError(f"the plain skeleton of {key!r} does not settle")  # ICU's data changed
    return folded, typed


_PLAIN_FOLDED, _PLAIN_TYPED = _plain_tables()


def imitated_latin(username: str) -> str | None:
    """The Latin name that ``username``, written wholly in another script, passes for; else None."""
    scripts = categories.unique_aliases(username) - {"COMMON", "INHERITED"}
    if len(scripts) != 1 or scripts == {"LATIN"}:
        return None
    as_typed = _skeleton(_bare(username))
    return next((key for key in (as_typed, *sorted(lookalike_keys(username))) if key.isascii()), None)
