"""Rationales that cite only what stage 1 found, and a checker for ones that do not.

Objects are referred to as ``<type> #<index>`` (index into the photo's detections), so a
reviewer can find each one on the overlay and the checker can verify each claim exactly.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from core.stage2.evidence import Evidence, condition_word, plural
from core.stage2.spatial import Fact, band
from core.taxonomy import Taxonomy
from core.types import Detection

PHRASES = {
    "at_lower_end_of": "at the lower end of",
    "adjacent_to": "next to",
    "overlaps": "overlapping",
    "above": "above",
    "below": "below",
    "left_of": "left of",
    "right_of": "right of",
}
# Relations worth a reviewer's attention, most telling first; plain directions add little.
SALIENT = ("at_lower_end_of", "overlaps", "adjacent_to")
_CITE = re.compile(r"(?P<type>[a-z]+(?: [a-z]+)?)\s+#(?P<idx>\d+)")
_REF = re.compile(r"(?P<phrase>at the lower end of|next to|overlapping|above|below|left of|right of)\s+(?P<type>[a-z ]+?)\s+#(?P<idx>\d+)")


def human(type_name: str) -> str:
    return type_name.replace("_", " ")


def describe(index: int, detections: Sequence[Detection], facts: Sequence[Fact], height: int, max_relations: int = 2) -> str:
    """One sentence of true spatial facts about ``detections[index]``."""
    d = detections[index]
    parts = [f"{human(d.type)} #{index} in the {band(d.box, height)} band"]
    mine = [f for f in facts if f.subject == index and f.predicate in SALIENT]
    mine.sort(key=lambda f: SALIENT.index(f.predicate))
    for f in mine[:max_relations]:
        parts.append(f"{PHRASES[f.predicate]} {human(detections[f.object].type)} #{f.object}")
    return ", ".join(parts)


def trim_unfinished(text: str | None) -> str | None:
    """Drop the clause a length-capped generation broke off (``"..., next to slope drain #"``),
    so a cut-off citation such as ``#1`` of ``#10`` never reads as a claim. Pure; never raises."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if not text or text[-1] in ".!?":
        return text or None
    cut = max(text.rfind(","), text.rfind(";"), text.rfind(". "))
    return (text[:cut].rstrip() + ".") if cut > 0 else text + "…"


CLOSE_MARGIN = 0.3  # a runner-up within this of the verdict is named: the call is not clear-cut


def verdict(probabilities: dict[str, float]) -> str:
    """``"blocked at 52%, runner-up damaged at 41%"``: the verdict's probability, and the runner-up
    when it is within ``CLOSE_MARGIN``; its number says how close ("close to" read as a near tie
    at 57% vs 28%). True by construction; ``unfaithful_claims`` checks it against the numbers."""
    ranked = sorted(probabilities.items(), key=lambda kv: -kv[1])
    text = f"{ranked[0][0]} at {ranked[0][1]:.0%}"
    if len(ranked) > 1 and ranked[0][1] - ranked[1][1] < CLOSE_MARGIN:
        text += f", runner-up {ranked[1][0]} at {ranked[1][1]:.0%}"
    return text


def with_verdict(text: str, probabilities: dict[str, float], evidence: str = "") -> str:
    """A model-written rationale with the verdict (and the neighbour ``evidence`` sentence, when
    given) appended, so a reviewer sees how close the call was and what similar objects were even
    when the model's text only says where the object is."""
    text, said = text.strip(), verdict(probabilities) + (f"; {evidence}" if evidence else "")
    return f"{text}{'' if text.endswith(('.', '!', '?')) else '.'} {said[0].upper()}{said[1:]}."


def template_rationale(probabilities: dict[str, float], index: int, detections: Sequence[Detection], facts: Sequence[Fact], height: int,
                       evidence: str = "") -> str:
    """A short, faithful-by-construction rationale: where the object is, what it touches, how
    sure the verdict is (naming the runner-up when it is close) and, given the ``evidence``
    sentence (:meth:`core.stage2.evidence.Evidence.sentence`), what similar labelled objects were."""
    tail = f"; {evidence}" if evidence else ""
    return f"{describe(index, detections, facts, height).capitalize()}; {verdict(probabilities)}{tail}."


def unfaithful_claims(rationale: str, index: int, detections: Sequence[Detection], facts: Sequence[Fact], taxonomy: Taxonomy,
                     probabilities: dict[str, float] | None = None, evidence: Evidence | None = None) -> list[str]:
    """Claims in ``rationale`` about object ``index`` that the computed facts do not support.

    Flags (a) a cited ``<type> #k`` where object k does not exist or is of another type,
    (b) a relation to object k that is not among the spatial facts, (c) a mention of an
    object type that stage 1 did not find in the photo at all, and, given the finding's
    ``probabilities``, (d) a ``<class> at NN%`` that is not that class's probability (rounded) or
    names a class that was not a candidate, and (e) an ``N of the K most similar labelled <type>s
    were <condition>`` that the finding's ``evidence`` (the neighbours looked up) does not give
    word for word, or any such claim when no neighbours were looked up. Never raises.
    """
    problems = []
    text = (rationale or "").lower()
    if probabilities is not None:
        problems += _probability_claims(text, probabilities, taxonomy)
    problems += _neighbour_claims(text, evidence, taxonomy)
    held = {(f.predicate, f.object) for f in facts if f.subject == index}
    by_phrase = {v: k for k, v in PHRASES.items()}
    type_words = {human(t) for t in taxonomy.type_names}
    bad_refs = set()
    for m in _CITE.finditer(text):
        k, typ = int(m.group("idx")), m.group("type").strip()
        typ = next((t for t in type_words if typ.endswith(t)), None)
        if typ is None:
            continue
        if k >= len(detections) or human(detections[k].type) != typ:
            bad_refs.add(k)
            problems.append(f"cites {typ} #{k}, which stage 1 did not find")
    for m in _REF.finditer(text):
        k, typ = int(m.group("idx")), m.group("type").strip()
        if k not in bad_refs and (by_phrase[m.group("phrase")], k) not in held:
            problems.append(f"says '{m.group('phrase')} {typ} #{k}', which the spatial facts do not support")
    found = {human(d.type) for d in detections}
    for t in taxonomy.type_names:
        if re.search(rf"\b{re.escape(human(t))}s?\b", text) and human(t) not in found:
            problems.append(f"mentions a {human(t)}, but stage 1 found none")
    return problems


def stale_citations(rationale: str, now: Mapping[int, str | None], taxonomy: Taxonomy) -> list[str]:
    """The objects ``rationale`` cites (``<type> #k``) that are no longer what it says, once
    reviewers have changed the photo: deleted, now of another type, or not on it. True when it was
    written, a rationale that still says "next to rock toe #2" after #2 was deleted as a false box
    misleads the reviewer reading it.

    Args:
        now: each object index on the photo → its type now, or None where it was deleted.

    Returns:
        One phrase per stale citation, in the order cited (``"rock toe #2 was deleted"``,
        ``"toe drain #3 is now a rock toe"``); empty when every citation still holds.
    """
    type_words = {human(t): t for t in taxonomy.type_names}
    stale, seen = [], set()
    for m in _CITE.finditer((rationale or "").lower()):
        k, words = int(m.group("idx")), m.group("type").strip()
        cited = next((w for w in type_words if words.endswith(w)), None)
        if cited is None or k in seen:
            continue
        seen.add(k)
        if k not in now:
            stale.append(f"{cited} #{k} is not on this photo")
        elif now[k] is None:
            stale.append(f"{cited} #{k} was deleted")
        elif now[k] != type_words[cited]:
            stale.append(f"{cited} #{k} is now a {human(now[k])}")
    return stale


_PERCENT = re.compile(r"(?P<label>[a-z][a-z -]*?)\s+at\s+(?P<pct>\d{1,3})%")


def _probability_claims(text: str, probabilities: dict[str, float], taxonomy: Taxonomy) -> list[str]:
    """Each ``<class> at NN%`` (a taxonomy class: the longest one the words end with) must name a
    candidate class and its probability rounded to a whole percent; other "at NN%" phrases ("at
    40% of the height") make no claim about the verdict and pass."""
    problems = []
    names = sorted(taxonomy.class_names, key=len, reverse=True)
    for m in _PERCENT.finditer(text):
        label = m.group("label").strip()
        name = next((n for n in names if label.endswith(n.lower())), None)
        if name is None:
            continue
        if name not in probabilities:
            problems.append(f"gives {name} {m.group('pct')}%, but {name} is not among the candidates {list(probabilities)}")
        elif int(m.group("pct")) != round(probabilities[name] * 100):
            problems.append(f"gives {name} {m.group('pct')}%, but its probability is {probabilities[name]:.0%}")
    return problems


_NEIGHBOURS = re.compile(r"(?P<n>\d+) of the (?P<k>\d+) most similar labelled (?P<type>[a-z ]+?) (?:were|was) (?P<word>[a-z]+)"
                         r"(?:, (?P<m>\d+) (?P<other>[a-z]+))?")


def _neighbour_claims(text: str, evidence: Evidence | None, taxonomy: Taxonomy) -> list[str]:
    """Each ``N of the K most similar labelled <type>s were <condition>[, M <other condition>]`` must
    be what the index gave: K neighbours looked up for this object's type, N of them of that
    condition (and M of the other)."""
    problems = []
    for m in _NEIGHBOURS.finditer(text):
        claim = m.group(0)
        if evidence is None:
            problems.append(f"says '{claim}', but no similar objects were looked up")
            continue
        found = sum(condition_word(taxonomy, e.class_name) == m.group("word") for e in evidence.neighbours)
        if m.group("type") != plural(evidence.object_type):
            problems.append(f"says '{claim}', but the object is a {evidence.object_type.replace('_', ' ')}")
        elif int(m.group("k")) != len(evidence.neighbours) or int(m.group("n")) != found:
            problems.append(f"says '{claim}', but {found} of the {len(evidence.neighbours)} looked up were {m.group('word')}")
        elif m.group("m") is not None:
            others = sum(condition_word(taxonomy, e.class_name) == m.group("other") for e in evidence.neighbours)
            if int(m.group("m")) != others:
                problems.append(f"says '{claim}', but {others} of the {len(evidence.neighbours)} looked up were {m.group('other')}")
    return problems
