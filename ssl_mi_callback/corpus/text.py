"""Seeded English sentence generator: a small built-in grammar and word list, no downloads."""
from __future__ import annotations

import random
from typing import Iterator, List, Sequence, Tuple

DETERMINERS = ("the", "a", "this", "that", "every", "some", "one", "each", "my", "her", "his", "our",
               "their", "your", "no", "another")
PLURAL_DETERMINERS = ("the", "these", "those", "some", "many", "few", "all", "two", "three", "several",
                      "our", "their", "my", "her", "four", "most")
ADJECTIVES = (
    "big", "small", "old", "young", "green", "red", "blue", "yellow", "quiet", "loud", "happy", "sad",
    "bright", "dark", "warm", "cold", "heavy", "light", "quick", "slow", "clever", "gentle", "strange",
    "famous", "hungry", "tired", "empty", "full", "busy", "lazy", "brave", "shy", "careful", "noisy",
    "ancient", "modern", "simple", "curious", "golden", "silver", "wooden", "narrow", "wide", "tall",
    "short", "soft", "rough", "smooth", "fresh", "broken", "hidden", "proud", "polite", "friendly",
    "thirsty", "sleepy", "lucky", "honest", "patient", "distant", "rusty", "shiny", "frozen", "sharp",
    "purple", "orange", "elegant", "humble", "nervous", "calm", "wild", "gray", "pale", "sudden",
)
NOUNS = (
    ("dog", "dogs"), ("cat", "cats"), ("teacher", "teachers"), ("farmer", "farmers"),
    ("child", "children"), ("doctor", "doctors"), ("bird", "birds"), ("horse", "horses"),
    ("sailor", "sailors"), ("baker", "bakers"), ("student", "students"), ("pilot", "pilots"),
    ("neighbor", "neighbors"), ("painter", "painters"), ("singer", "singers"), ("driver", "drivers"),
    ("girl", "girls"), ("boy", "boys"), ("woman", "women"), ("man", "men"), ("fox", "foxes"),
    ("rabbit", "rabbits"), ("mouse", "mice"), ("king", "kings"), ("queen", "queens"),
    ("soldier", "soldiers"), ("writer", "writers"), ("nurse", "nurses"), ("judge", "judges"),
    ("chef", "chefs"), ("monkey", "monkeys"), ("tiger", "tigers"), ("wolf", "wolves"),
    ("goat", "goats"), ("sheep", "sheep"), ("duck", "ducks"), ("frog", "frogs"),
    ("engineer", "engineers"), ("gardener", "gardeners"), ("musician", "musicians"),
    ("stranger", "strangers"), ("visitor", "visitors"), ("uncle", "uncles"), ("aunt", "aunts"),
    ("brother", "brothers"), ("sister", "sisters"), ("captain", "captains"), ("waiter", "waiters"),
    ("poet", "poets"), ("thief", "thieves"), ("lion", "lions"), ("bear", "bears"),
)
THINGS = (
    ("book", "books"), ("letter", "letters"), ("apple", "apples"), ("chair", "chairs"),
    ("table", "tables"), ("window", "windows"), ("door", "doors"), ("box", "boxes"), ("cup", "cups"),
    ("song", "songs"), ("story", "stories"), ("picture", "pictures"), ("garden", "gardens"),
    ("river", "rivers"), ("bridge", "bridges"), ("road", "roads"), ("house", "houses"),
    ("car", "cars"), ("boat", "boats"), ("train", "trains"), ("key", "keys"), ("coin", "coins"),
    ("map", "maps"), ("lamp", "lamps"), ("basket", "baskets"), ("bottle", "bottles"),
    ("clock", "clocks"), ("shoe", "shoes"), ("hat", "hats"), ("coat", "coats"),
    ("bicycle", "bicycles"), ("mountain", "mountains"), ("village", "villages"),
    ("island", "islands"), ("forest", "forests"), ("field", "fields"), ("cake", "cakes"),
    ("sandwich", "sandwiches"), ("orange", "oranges"), ("potato", "potatoes"), ("tree", "trees"),
    ("flower", "flowers"), ("stone", "stones"), ("feather", "feathers"), ("pencil", "pencils"),
    ("jacket", "jackets"), ("pillow", "pillows"), ("blanket", "blankets"), ("ladder", "ladders"),
    ("engine", "engines"), ("machine", "machines"), ("message", "messages"), ("ticket", "tickets"),
    ("bucket", "buckets"), ("wagon", "wagons"), ("mirror", "mirrors"), ("candle", "candles"),
    ("drum", "drums"), ("guitar", "guitars"), ("puzzle", "puzzles"), ("shell", "shells"),
)
TRANSITIVE_VERBS = (
    # (past, present singular, base)
    ("found", "finds", "find"), ("carried", "carries", "carry"), ("painted", "paints", "paint"),
    ("opened", "opens", "open"), ("watched", "watches", "watch"), ("bought", "buys", "buy"),
    ("sold", "sells", "sell"), ("cleaned", "cleans", "clean"), ("moved", "moves", "move"),
    ("lifted", "lifts", "lift"), ("pushed", "pushes", "push"), ("pulled", "pulls", "pull"),
    ("dropped", "drops", "drop"), ("fixed", "fixes", "fix"), ("borrowed", "borrows", "borrow"),
    ("hid", "hides", "hide"), ("noticed", "notices", "notice"), ("followed", "follows", "follow"),
    ("visited", "visits", "visit"), ("washed", "washes", "wash"), ("touched", "touches", "touch"),
    ("forgot", "forgets", "forget"), ("remembered", "remembers", "remember"),
    ("described", "describes", "describe"), ("chased", "chases", "chase"),
    ("needed", "needs", "need"), ("wanted", "wants", "want"), ("liked", "likes", "like"),
    ("kept", "keeps", "keep"), ("threw", "throws", "throw"), ("caught", "catches", "catch"),
    ("built", "builds", "build"), ("drew", "draws", "draw"), ("held", "holds", "hold"),
    ("left", "leaves", "leave"), ("brought", "brings", "bring"), ("sent", "sends", "send"),
    ("checked", "checks", "check"), ("counted", "counts", "count"), ("packed", "packs", "pack"),
)
INTRANSITIVE_VERBS = (
    ("slept", "sleeps", "sleep"), ("laughed", "laughs", "laugh"), ("waited", "waits", "wait"),
    ("arrived", "arrives", "arrive"), ("danced", "dances", "dance"), ("smiled", "smiles", "smile"),
    ("walked", "walks", "walk"), ("jumped", "jumps", "jump"), ("sang", "sings", "sing"),
    ("worked", "works", "work"), ("rested", "rests", "rest"), ("listened", "listens", "listen"),
    ("whispered", "whispers", "whisper"), ("shouted", "shouts", "shout"), ("cried", "cries", "cry"),
    ("swam", "swims", "swim"), ("ran", "runs", "run"), ("returned", "returns", "return"),
    ("stayed", "stays", "stay"), ("travelled", "travels", "travel"), ("wandered", "wanders", "wander"),
)
ADVERBS = (
    "quickly", "slowly", "quietly", "loudly", "happily", "carefully", "suddenly", "gently", "again",
    "today", "yesterday", "often", "rarely", "always", "never", "early", "late", "together", "alone",
    "outside", "inside", "soon", "calmly", "proudly", "eagerly", "politely", "badly", "easily",
)
PREPOSITIONS = ("near", "behind", "under", "over", "beside", "across", "inside", "around", "through",
                "along", "against", "beyond", "below", "above", "toward", "past", "between")
PRONOUNS = (("he", False), ("she", False), ("they", True), ("we", True), ("i", True), ("you", True))
CONJUNCTIONS = ("and", "but", "because", "while", "so", "although", "when", "before", "after", "until")


class SentenceGenerator:
    """Draws grammatical English sentences from a seeded RNG.

    The same seed always yields the same sentence sequence. ``unique()`` never repeats a sentence,
    so splits built from it have disjoint text.
    """

    def __init__(self, seed: int, min_words: int = 4, max_words: int = 16) -> None:
        if not 1 <= min_words <= max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
        self.min_words = min_words
        self.max_words = max_words
        self._rng = random.Random(seed)

    def _choice(self, options: Sequence):
        return options[self._rng.randrange(len(options))]

    def _noun_phrase(self, *, people: bool) -> Tuple[List[str], bool]:
        """Words of a noun phrase and whether it is plural."""
        singular, plural = self._choice(NOUNS if people else THINGS)
        is_plural = self._rng.random() < 0.3
        words = [self._choice(PLURAL_DETERMINERS if is_plural else DETERMINERS)]
        if self._rng.random() < 0.55:
            words.append(self._choice(ADJECTIVES))
        words.append(plural if is_plural else singular)
        if words[0] == "a" and words[1][0] in "aeiou":
            words[0] = "an"
        return words, is_plural

    def _prepositional_phrase(self) -> List[str]:
        return [self._choice(PREPOSITIONS)] + self._noun_phrase(people=self._rng.random() < 0.3)[0]

    def _clause(self) -> List[str]:
        if self._rng.random() < 0.25:
            subject, plural = self._choice(PRONOUNS)
            subject_words = [subject]
        else:
            subject_words, plural = self._noun_phrase(people=self._rng.random() < 0.8)
        transitive = self._rng.random() < 0.65
        past, present, base = self._choice(TRANSITIVE_VERBS if transitive else INTRANSITIVE_VERBS)
        tense = self._rng.random()
        if tense < 0.6:
            verb = [past]
        elif tense < 0.85:
            verb = [base if plural else present]
        else:
            verb = ["will", base]
        words = subject_words + verb
        if transitive:
            words += self._noun_phrase(people=self._rng.random() < 0.3)[0]
        if self._rng.random() < 0.4:
            words += self._prepositional_phrase()
        if self._rng.random() < 0.35:
            words.append(self._choice(ADVERBS))
        return words

    def sentence(self) -> str:
        """One sentence within [min_words, max_words] words (clauses joined by conjunctions)."""
        for _ in range(1000):
            words = self._clause()
            while len(words) < self.min_words or (
                    len(words) < self.max_words and self._rng.random() < 0.3):
                words += [self._choice(CONJUNCTIONS)] + self._clause()
            if self.min_words <= len(words) <= self.max_words:
                text = " ".join(words)
                return text[0].upper() + text[1:].replace(" i ", " I ") + "."
        raise RuntimeError(f"could not draw a sentence of {self.min_words}-{self.max_words} words")

    def unique(self) -> Iterator[str]:
        """Sentences that never repeat (case-insensitive)."""
        seen = set()
        while True:
            text = self.sentence()
            key = text.lower()
            if key not in seen:
                seen.add(key)
                yield text
