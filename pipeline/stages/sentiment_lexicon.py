"""The default sentiment backend: VADER's lexicon adapted to customer email. Pure: no I/O beyond
reading the lexicon that ships inside the ``vaderSentiment`` package (no download, every install).

VADER (Hutto & Gilbert, 2014) scores short social text: a valence lexicon with rules for negation
("not good"), intensifiers, capitals, "but" and punctuation. Customer mail differs in three ways,
handled here:

* **Politeness is not praise.** "Thanks", "regards", "kind", "please", "hope", "like" ("I'd like
  to…"), "help" and "support" carry no valence, and closing formulas ("have a great weekend",
  "thanks in advance", "looking forward to…") are removed before scoring.
* **Business cues** VADER has no words for: churn ("cancel our subscription", "not renew",
  "switching to another provider"), escalation ("third time", "your manager", "no response"),
  billing problems ("charged twice", "refund"), outages ("not working", "down again"), and the
  positive ones (renewals, "works perfectly", "that fixed it"). Each cue adds a weight to the score.
* **"Still …"**: "still not working", "still waiting", "still broken" are complaints even after
  "thanks for the update".

The score is VADER's compound plus the cue weights, clamped to -1..1; :data:`THRESHOLDS` were chosen
on the labelled set in ``tests/data/sentiment/`` (``tests/data/sentiment/README.md`` says how).
"""

from __future__ import annotations

import re
from functools import cache

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from pipeline.stages.sentiment import Sentiment, Thresholds, clamp, label_for

__all__ = ["CUES", "MODEL", "THRESHOLDS", "LexiconClassifier", "cue_score"]

MODEL = "vader-business-1"
#: Chosen on the labelled set (grid search maximizing accuracy with negative precision and recall
#: kept at or above 0.90; see tests/data/sentiment/README.md).
THRESHOLDS = Thresholds(negative=-0.2, positive=0.3)
#: Read per message: the new text of a customer email is short; a novel is scored by its beginning.
TEXT_CHARS = 2_000

# Politeness and business-neutral words VADER scores as positive (or negative) in social text.
_NEUTRAL_WORDS = {
    "thanks": 0.0, "thank": 0.0, "thx": 0.0, "regards": 0.0, "kind": 0.0, "kindly": 0.0, "please": 0.0, "best": 0.0,
    "dear": 0.0, "sincerely": 0.0, "cheers": 0.0, "welcome": 0.0, "hope": 0.0, "hoping": 0.0, "wishes": 0.0, "warm": 0.0,
    "care": 0.0, "like": 0.0, "ok": 0.0, "okay": 0.0, "help": 0.0, "support": 0.0, "free": 0.0, "yes": 0.0, "no": 0.0,
    "true": 0.0, "sure": 0.0, "share": 0.0, "appreciate": 0.6, "appreciated": 0.6, "sorry": 0.0, "apologies": 0.0,
    "matter": 0.0, "pretty": 0.0, "question": 0.0, "questions": 0.0, "interest": 0.0, "interested": 0.0, "charge": 0.0,
    "charges": 0.0, "charged": 0.0, "ticket": 0.0, "pay": 0.0, "credit": 0.0, "trial": 0.0, "demo": 0.0, "fine": 0.3,
    "urgent": -0.8, "asap": -0.5, "again": 0.0, "waiting": -0.5, "wait": 0.0, "problem": -1.0, "problems": -1.0,
    "issue": -0.5, "issues": -0.5, "bug": -1.2, "bugs": -1.2, "outage": -2.0, "downtime": -1.8,
    "overcharged": -2.2, "unresponsive": -2.0, "ignored": -2.0, "escalate": -1.8, "escalating": -1.8, "escalation": -1.6,
    "chargeback": -2.2, "unusable": -2.6, "useless": -2.5, "slow": -1.2, "laggy": -1.5,
    "fixed": 1.2, "solved": 1.5, "resolved": 1.2, "smoothly": 1.8, "seamless": 1.8, "intuitive": 1.6, "lifesaver": 2.5,
    "renew": 0.8, "renewal": 0.3, "recommend": 1.8, "recommended": 1.6, "impressed": 2.2, "thrilled": 2.8,
    "delighted": 2.8, "rockstar": 2.5, "rockstars": 2.5, "kudos": 2.0, "shoutout": 1.5, "wrong": -1.8,
    "agreement": 0.0, "active": 0.0, "security": 0.0, "avoid": 0.0, "error": -0.6, "errors": -0.6, "joke": 0.0,
    "honestly": 0.0, "promised": 0.0, "stable": 0.5, "solution": 0.0, "value": 0.3, "protect": 0.0, "safe": 0.5,
    "smooth": 1.5, "save": 1.0, "saves": 1.0, "important": 0.0, "lawyer": -0.3, "legal": 0.0, "refund": 0.0,
}

# Closing and opening formulas: said to everyone, whatever the mood.
_PLEASANTRIES = re.compile(
    r"\b(?:have a (?:great|nice|good|lovely|wonderful) (?:day|weekend|week|evening|one)|thanks? (?:you )?in advance|"
    r"(?:i )?hope (?:you(?:'re| are)|this (?:email|message) finds you|all is) (?:well|doing well|good)|hope this helps|"
    r"looking forward to [^.!?\n]{0,80}|feel free to|let me know|best regards|kind regards|warm regards|best wishes|"
    r"many thanks|thanks (?:a lot|so much) for your (?:time|patience)|happy (?:new year|holidays|friday)|"
    r"thank you for (?:your (?:time|patience|email|message|reply|response))|all the best)\b")  # on lowercased text

#: (cue, pattern, weight): business phrases VADER has no words for. Negative cues name the reason
#: an at-risk account shows; positive ones only move the score.
CUES: tuple[tuple[str, re.Pattern[str], float], ...] = tuple((name, re.compile(p), w) for name, p, w in (  # on lowercased text
    ("churn", r"\b(?:(?:will|to|going to|must|have to|plan to) cancel\b|"
              r"cancel(?:l?ing|l?ed)?|terminat(?:e|ing)|end(?:ing)?) (?:our|my|the) (?:subscription|contract|account|plan|"
              r"licen[cs]es?|service|agreement)|\b(?:not|won'?t|will not|don'?t plan to|do not plan to) (?:be )?renew(?:ing)?\b|"
              r"\bswitch(?:ing)? to (?:a |another |an? other )?(?:competitor|provider|vendor|tool|solution|\w+ instead)|"
              r"\b(?:looking|look) (?:at|for|into) (?:other )?(?:alternatives|other (?:vendors|providers|options|tools))|"
              r"\bclose (?:our|my) account|\bcancellation\b|\bchurn(?:ing)?\b|\bmov(?:e|ing) (?:away|elsewhere)\b|"
              r"\breconsider(?:ing)? (?:the|our) (?:partnership|contract|relationship|subscription)", -0.6),
    ("escalation", r"\b(?:(?:third|fourth|fifth|3rd|4th|5th|umpteenth) time|(?:your|a) (?:manager|supervisor)|"
                   r"escalat(?:e|ed|ing|ion)|formal complaint|complain(?:t|ts|ing)?\b|legal (?:action|steps)|is this a joke|"
                   r"(?:quality|service|support|performance) (?:has |of \w+ has )?(?:dropped|declined|deteriorated|gone downhill|"
                   r"got worse|gotten worse)|"
                   r"no (?:one|body) (?:has )?(?:answered|responded|replied|got back|gets back|called)|"
                   r"(?:nobody|no one) (?:is )?(?:answering|responding)|(?:haven'?t|have not|never) (?:heard back|received (?:a |any )?"
                   r"(?:reply|response|answer))|no (?:reply|response|answer) (?:yet|since|for|from)|for (?:two|three|four|several|many) "
                   r"(?:days|weeks)|(?:over|more than) a (?:week|month)|unacceptable|ridiculous|fed up|sick of|tired of|"
                   r"waste of (?:time|money)|last chance|final warning)", -0.45),
    ("billing", r"\b(?:(?:double|over|wrongly|incorrectly)[- ]?(?:charged|billed)|(?:charged|billed) (?:us |me )?(?:twice|two times|"
                r"double|again|for (?:seats|users|licen[cs]es) we)|wrong (?:invoice|amount|charge)|invoice (?:is|was) (?:wrong|incorrect)|"
                r"(?:want|need|demand|expect|request(?:ing)?) (?:a |our |my )?(?:full )?refund|refund (?:us|me|the)|chargeback|"
                r"dispute (?:the|this) (?:charge|invoice)|unauthori[sz]ed charge|price (?:hike|increase)|doubles? (?:our|my|the) "
                r"(?:bill|costs?|price))", -0.5),
    ("outage", r"\b(?:(?:not|isn'?t|aren'?t|doesn'?t|don'?t|didn'?t|won'?t|stopped|no longer|never) (?:\w+ )?(?:work(?:ing|s)?|"
               r"load(?:ing|s)?|sync(?:ing|s)?|send(?:ing|s)?|respond(?:ing|s)?|open(?:ing|s)?|connect(?:ing|s)?)\b(?! for (?:me|us))|"
               r"(?:is|are|was|went|been|it'?s) down\b|down again|outage|keeps? (?:crashing|failing|freezing|logging)|"
               r"(?:lost|losing|lose) (?:\w+ )?(?:data|orders|money|sales|customers|revenue|business|work)|data loss|"
               r"(?:broken|failing|fails|crash(?:es|ed|ing)?)\b|(?:deleted|wiped|erased|lost) (?:all |a \w+ of |our |my ))", -0.35),
    ("persisting", r"\bstill (?:not|no|nothing|broken|down|waiting|failing|missing|wrong|slow|stuck|crashing|getting|seeing|"
                   r"happening|the same|an issue|a problem|unresolved|unanswered|have(?:n'?t| not| the same| this)|"
                   r"has(?:n'?t| not)|is(?:n'?t| not)|does(?:n'?t| not)|can'?t|cannot|won'?t|doesn|isn)|"
                   r"\b(?:same|this) (?:problem|issue|error) (?:again|keeps|still|persists)|"
                   r"\b(?:broken|down|failing|failed|crashed|wrong) again\b|"
                   r"\b(?:problem|issue|error|bug) (?:persists|is back|came back|returned)\b|\bnot (?:yet )?(?:fixed|resolved|solved)\b|"
                   r"\bno (?:progress|update|change|improvement)\b", -0.5),
    ("praise", r"\b(?:works? (?:perfectly|great|fine now|like a charm|beautifully|flawlessly|again|now)|"
               r"(?:that|this) (?:did the trick|worked|"
               r"fixed it|solved it)|(?:fixed|solved|resolved) (?:it|the (?:issue|problem|bug))|(?:great|excellent|amazing|fantastic|"
               r"outstanding|superb|stellar|awesome|wonderful) (?:job|work|support|service|team|help|product|experience)|"
               r"(?:team|staff|you guys|you) (?:are|were|is) (?:great|amazing|awesome|fantastic|the best)|"
               r"(?:can'?t|cannot) thank you enough|made our (?:day|week|lives)|exceeded (?:our|my) expectations|above and beyond|"
               r"(?:was|were) (?:excellent|outstanding|amazing|fantastic|superb))", 0.45),
    ("growth", r"\b(?:(?:happy|glad|excited|ready|decided|plan(?:ning)?) to (?:renew|expand|upgrade|extend|sign|add)\b|"
               r"(?:add|adding|buy|purchase) (?:\d+ |more |another |\w+ more )(?:seats|licen[cs]es|users)|renew(?:ed|ing)? "
               r"(?:for|our|the) (?:another|contract|subscription|\d)|roll(?:ing)? (?:it )?out to|recommend(?:ed)? you)", 0.4),
))
_NEGATIVE_CUES = frozenset(name for name, _, w in CUES if w < 0)
#: Words (tokens of the lowercased text) at least one of which each cue's expression needs: most mail
#: skips most expressions for the price of a set test.
_TRIGGERS: dict[str, frozenset[str]] = {name: frozenset(words.split()) for name, words in {
    "churn": "cancel canceling cancelling canceled cancelled cancellation terminate terminating end ending renew renewing "
             "switch switching alternatives vendors providers options tools close churn churning move moving reconsider "
             "reconsidering",
    "escalation": "third fourth fifth 3rd 4th 5th umpteenth manager supervisor escalate escalated escalating escalation complaint "
                  "complaints complain complaining legal joke escalations managers supervisors ridiculously dropped declined "
                  "deteriorated gone got gotten one body nobody answering responding heard received reply response answer days "
                  "weeks week month unacceptable ridiculous fed sick tired waste chance warning",
    "billing": "charged billed overcharged overbilled doublecharged wrong invoice refund refunds chargeback chargebacks "
               "dispute unauthorized unauthorised price double doubles",
    "outage": "work working works load loading loads sync syncing syncs send sending sends respond responding responds open "
              "opening opens connect connecting connects down outage outages losses keep keeps lost losing lose loss broken "
              "failing fails crash crashes crashed crashing deleted wiped erased",
    "persisting": "still problem issue error again persists back returned fixed resolved solved progress update change "
                  "improvement",
    "praise": "work works trick worked fixed solved resolved job support service team help product experience great amazing "
              "awesome fantastic best enough made exceeded beyond excellent outstanding superb jobs products services teams "
              "helpful experiences greatly amazingly awesomely fantastically",
    "growth": "renew expand upgrade extend sign add seats licenses licences users renewed renewing roll rolling recommend "
              "recommended",
}.items()}
_PLEASANTRY_TRIGGERS = ("have a", "thank", "hope", "looking forward", "feel free", "let me know", "regards", "wishes", "many thanks",
                        "happy", "all the best")
_WORDS = re.compile(r"[a-z0-9']+")  # the words of lowercased text (VADER strips punctuation around tokens the same way)


@cache
def _analyzer() -> SentimentIntensityAnalyzer:
    analyzer = SentimentIntensityAnalyzer()
    analyzer.lexicon.update(_NEUTRAL_WORDS)
    return analyzer


def cue_score(text: str, words: frozenset[str] | set[str] | None = None) -> tuple[float, tuple[str, ...]]:
    """The summed weight of the business cues in ``text`` (each cue counted once) and the negative
    cues' names (``words``: the text's words, when the caller has them)."""
    total, found = 0.0, []
    low = text.lower()
    words = set(_WORDS.findall(low)) if words is None else words
    for name, pattern, weight in CUES:
        if not _TRIGGERS[name].isdisjoint(words) and pattern.search(low):
            total += weight
            if name in _NEGATIVE_CUES:
                found.append(name)
    return total, tuple(found)


def _without_pleasantries(text: str) -> str:
    """``text`` with the formulas of :data:`_PLEASANTRIES` blanked (found in the lowercased text; case kept
    elsewhere, since VADER reads capitals as emphasis)."""
    low = text.lower()
    if not any(t in low for t in _PLEASANTRY_TRIGGERS):
        return text
    if len(low) != len(text):  # a few characters change length when lowercased: work on the lowercased text
        return _PLEASANTRIES.sub(" ", low)
    out, at = [], 0
    for m in _PLEASANTRIES.finditer(low):
        out.append(text[at : m.start()])
        out.append(" ")
        at = m.end()
    out.append(text[at:])
    return "".join(out)


def _has_valence(text: str, words: set[str]) -> bool:
    """Whether VADER could score ``text`` other than 0: some token (as VADER strips it, or whole, for
    emoticons) is in its lexicon, or the text has characters beyond ASCII (emoji, which VADER reads as
    words). VADER costs about 3 µs a word; most of a long text's words are not in its lexicon."""
    if not text.isascii():
        return True
    lexicon = _analyzer().lexicon.keys()
    return not (lexicon.isdisjoint(words) and lexicon.isdisjoint(text.lower().split()))


class LexiconClassifier:
    """VADER with the business adaptations above; the default backend."""

    name = MODEL

    def __init__(self, thresholds: Thresholds = THRESHOLDS) -> None:
        self.thresholds = thresholds

    def classify(self, text: str) -> Sentiment:
        text = text[:TEXT_CHARS]
        if not text.strip():
            return Sentiment("neutral", 0.0, self.name)
        words = set(_WORDS.findall(text.lower()))
        plain = _without_pleasantries(text)
        compound = float(_analyzer().polarity_scores(plain)["compound"]) if _has_valence(plain, words) else 0.0
        weight, cues = cue_score(text, words)
        score = clamp(compound + weight)
        return Sentiment(label_for(score, self.thresholds), score, self.name, cues)
