"""The built-in toy language pair: English-like source -> an invented verb-final target language.

Generated deterministically from a seed, with the gold word alignment of every pair.
Knows nothing of tokenizers, tensors or models.

Target grammar, against the source:
  * clause order Subject [Object 'o'] [PP] [Adverb] Verb   (verb-final, object marker 'o')
  * noun phrase  Noun [plural 'ri'] Adjectives(mirrored) Determiner/Number   (modifiers after the noun)
  * a prepositional phrase modifying a noun comes before that noun phrase
  * prepositions become postpositions:  'on the table' -> 'tabu ka ue'; a phrase modifying a noun
    ('with', 'of', 'from', 'without') is set apart from one modifying the verb ('in', 'on', 'near', ...)
  * one-to-many words: plural nouns ('dogs' -> 'inu ri'), 'every' -> 'zu mei', some verbs ('laughs' -> 'hahi kemo')
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from mtcli.config import ToyConfig

# source word -> target words; plural nouns and plural verb forms are derived below
NOUNS = {
    "dog": "inu", "cat": "neko", "bird": "tori", "man": "otok", "woman": "zhena", "child": "rebi",
    "teacher": "sensa", "farmer": "nofu", "king": "raja", "horse": "uma", "house": "domu", "table": "tabu",
    "river": "kawa", "tree": "kiyu", "garden": "niwa", "boat": "fune", "city": "mati", "book": "hono",
    "ball": "tama", "song": "uta", "apple": "ringo", "car": "kuru",
}
PLURAL = {"man": "men", "woman": "women", "child": "children", "city": "cities"}
ADJECTIVES = {
    "big": "ooki", "small": "chisa", "red": "aka", "blue": "aoi", "old": "furu", "young": "waka",
    "happy": "ureshi", "quiet": "shizu", "green": "midori", "tall": "taka", "strange": "hen", "lazy": "darui",
}
DETERMINERS = {"the": ["ka"], "a": ["na"], "this": ["ko"], "that": ["so"], "every": ["zu", "mei"]}
NUMBERS = {"two": "futa", "three": "mitsu", "four": "yotsu", "five": "itsu", "many": "ooku", "some": "sukosi"}
# (singular, plural) source verb forms -> target words
TRANSITIVE = {
    ("sees", "see"): ["miru"], ("likes", "like"): ["suki"], ("finds", "find"): ["mitsuke"],
    ("carries", "carry"): ["hakobu"], ("follows", "follow"): ["ou"], ("paints", "paint"): ["kaku"],
    ("feeds", "feed"): ["yasinau"], ("watches", "watch"): ["nagame"], ("builds", "build"): ["tateru"],
    ("pushes", "push"): ["osu"], ("greets", "greet"): ["aisatsu", "suru"], ("visits", "visit"): ["tazune", "ru"],
}
INTRANSITIVE = {
    ("sleeps", "sleep"): ["nemu"], ("runs", "run"): ["hasiru"], ("sings", "sing"): ["utau"],
    ("waits", "wait"): ["matsu"], ("falls", "fall"): ["ochiru"], ("laughs", "laugh"): ["hahi", "kemo"],
    ("swims", "swim"): ["oyo", "kemo"], ("dances", "dance"): ["odori", "kemo"], ("works", "work"): ["hataraku"],
}
# Prepositions that modify a noun and prepositions that modify a verb are kept apart, so that a phrase
# after an object ("sees the cat with the hat near the river") has one reading and one translation.
NOUN_PREPOSITIONS = {"with": "to", "of": "no", "from": "kara", "without": "nasi"}
VERB_PREPOSITIONS = {
    "in": "ni", "on": "ue", "near": "soba", "under": "sita", "behind": "usiro", "into": "naka", "over": "koe",
    "at": "de",
}
PREPOSITIONS = {**NOUN_PREPOSITIONS, **VERB_PREPOSITIONS}
ADVERBS = {"quickly": "hayaku", "slowly": "yukkuri", "often": "yoku", "never": "kesite", "today": "kyou"}
CONJUNCTIONS = {"and": "sosite", "but": "demo", "while": "aida", "because": "node"}
OBJECT_MARKER = "o"
_SORTED = {name: sorted(table) for name, table in [
    ("NOUNS", NOUNS), ("NUMBERS", NUMBERS), ("DETERMINERS", DETERMINERS), ("ADJECTIVES", ADJECTIVES),
    ("NOUN_PREPOSITIONS", NOUN_PREPOSITIONS), ("VERB_PREPOSITIONS", VERB_PREPOSITIONS),
    ("ADVERBS", ADVERBS), ("CONJUNCTIONS", CONJUNCTIONS),
    ("TRANSITIVE", TRANSITIVE), ("INTRANSITIVE", INTRANSITIVE)]}
PLURAL_MARKER = "ri"


@dataclass(frozen=True)
class ToyPair:
    src: str
    tgt: str
    alignment: tuple[tuple[int, int], ...]  # (source index, target index) gold links

    def alignment_text(self) -> str:
        """Pharaoh format, as used by word aligners: '0-1 2-0 ...'."""
        return " ".join(f"{s}-{t}" for s, t in self.alignment)


class Phrase:
    """Source tokens plus target tokens, each target token linked to source positions of this phrase."""

    def __init__(self, src: list[str], tgt: list[tuple[str, tuple[int, ...]]]):
        self.src = src
        self.tgt = tgt

    @staticmethod
    def word(src_word: str, tgt_words: list[str]) -> Phrase:
        return Phrase([src_word], [(w, (0,)) for w in tgt_words])


def combine(parts: list[Phrase], tgt_order: list[int | str]) -> Phrase:
    """Concatenate `parts` in source order; build the target in `tgt_order`
    (an int picks a part, a string inserts an unaligned target word)."""
    offsets, src = [], []
    for part in parts:
        offsets.append(len(src))
        src.extend(part.src)
    tgt: list[tuple[str, tuple[int, ...]]] = []
    for item in tgt_order:
        if isinstance(item, str):
            tgt.append((item, ()))
        else:
            tgt.extend((w, tuple(i + offsets[item] for i in links)) for w, links in parts[item].tgt)
    return Phrase(src, tgt)


class ToyGrammar:
    """Samples source sentences and their translations from one random.Random."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def noun_phrase(self, depth: int) -> tuple[Phrase, bool]:
        """Returns the phrase and whether it is plural."""
        rng = self.rng
        noun = rng.choice(_SORTED["NOUNS"])
        plural = rng.random() < 0.3
        if plural:
            spec_src = rng.choice(_SORTED["NUMBERS"] + ["the"])
            spec = Phrase.word(spec_src, [NUMBERS.get(spec_src, "ka")])
            head = Phrase.word(PLURAL.get(noun, noun + "s"), [NOUNS[noun], PLURAL_MARKER])
        else:
            spec_src = rng.choice(_SORTED["DETERMINERS"])
            spec = Phrase.word(spec_src, DETERMINERS[spec_src])
            head = Phrase.word(noun, [NOUNS[noun]])
        n_adj = rng.choices([0, 1, 2], weights=[5, 3, 1])[0]
        adjs = [Phrase.word(a, [ADJECTIVES[a]]) for a in rng.sample(_SORTED["ADJECTIVES"], n_adj)]
        parts = [spec, *adjs, head]
        # target: noun, adjectives mirrored, then determiner/number
        order: list[int | str] = [len(parts) - 1, *range(len(parts) - 2, 0, -1), 0]
        np_ = combine(parts, order)
        if depth > 0 and rng.random() < 0.25:
            pp = self.prepositional_phrase(NOUN_PREPOSITIONS, depth - 1)
            np_ = combine([np_, pp], [1, 0])  # the modifier comes before the noun phrase
        return np_, plural

    def prepositional_phrase(self, prepositions: dict[str, str], depth: int) -> Phrase:
        prep = self.rng.choice(sorted(prepositions))
        np_, _ = self.noun_phrase(depth)
        return combine([Phrase.word(prep, [prepositions[prep]]), np_], [1, 0])  # a postposition

    def clause(self, depth: int) -> Phrase:
        rng = self.rng
        subject, plural = self.noun_phrase(depth)
        transitive = rng.random() < 0.6
        verbs = TRANSITIVE if transitive else INTRANSITIVE
        forms = rng.choice(_SORTED["TRANSITIVE" if transitive else "INTRANSITIVE"])
        verb = Phrase.word(forms[1] if plural else forms[0], verbs[forms])
        parts, order = [subject, verb], [0]
        if transitive:
            obj, _ = self.noun_phrase(depth)
            parts.append(obj)
            order += [2, OBJECT_MARKER]
        if rng.random() < 0.35:
            parts.append(self.prepositional_phrase(VERB_PREPOSITIONS, depth))
            order.append(len(parts) - 1)
        if rng.random() < 0.2:
            adverb = rng.choice(_SORTED["ADVERBS"])
            parts.append(Phrase.word(adverb, [ADVERBS[adverb]]))
            order.append(len(parts) - 1)
        order.append(1)  # the verb comes last
        return combine(parts, order)

    def sentence(self, want: int, max_len: int) -> Phrase:
        """Clauses joined by conjunctions until the source is about `want` tokens long."""
        while True:
            parts = [self.clause(depth=self.rng.choice([0, 1, 2]))]
            length = len(parts[0].src)
            while length + 5 <= want:
                conj = self.rng.choice(_SORTED["CONJUNCTIONS"])
                parts += [Phrase.word(conj, [CONJUNCTIONS[conj]]), self.clause(depth=self.rng.choice([0, 1, 2]))]
                length += 1 + len(parts[-1].src)
            if length <= max_len:
                return combine(parts, list(range(len(parts))))


def _sample_pair(grammar: ToyGrammar, min_len: int, max_len: int) -> ToyPair:
    """A pair whose source length is near a length drawn uniformly from [min_len, max_len]."""
    sent = grammar.sentence(grammar.rng.randint(min_len, max_len), max_len)
    while len(sent.src) < min_len:
        sent = grammar.sentence(min_len, max_len)
    links = tuple(sorted((s, t) for t, (_, srcs) in enumerate(sent.tgt) for s in srcs))
    return ToyPair(" ".join(sent.src), " ".join(w for w, _ in sent.tgt), links)


def _split(seed: int, name: str, size: int, cfg: ToyConfig, taken: set[str]) -> list[ToyPair]:
    grammar = ToyGrammar(random.Random(f"mtcli-toy:{seed}:{name}"))
    pairs: list[ToyPair] = []
    misses = 0
    while len(pairs) < size:
        pair = _sample_pair(grammar, cfg.min_len, cfg.max_len)
        if pair.src in taken:
            misses += 1
            if misses > 100 * size + 10000:
                raise ValueError(f"toy grammar cannot make {size} distinct {name} sentences")
            continue
        taken.add(pair.src)
        pairs.append(pair)
    return pairs


SPLITS = ("test", "dev", "train")  # drawn in this order, each disjoint from the ones before


@functools.lru_cache(maxsize=16)
def toy_split(cfg: ToyConfig, name: str) -> tuple[ToyPair, ...]:
    """One split of the toy pair. Test is drawn first, so it does not depend on the other sizes."""
    earlier = SPLITS[: SPLITS.index(name)]
    taken = {pair.src for split in earlier for pair in toy_split(cfg, split)}
    size = {"test": cfg.test_size, "dev": cfg.dev_size, "train": cfg.train_size}[name]
    return tuple(_split(cfg.seed, name, size, cfg, taken))
