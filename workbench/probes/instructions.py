"""Instructions probe: IFEval-style prompts whose constraint code can verify (all lowercase, all
capitals, fewer than N words, include or avoid a word, exactly N bullet points, valid JSON, end with a
phrase, no commas, start with a word, a <<title>>, wrapped in quotes).

Every prompt is one user turn through the tokenizer's chat template (when it has one) and the reply
is generated greedily, in one batch, up to `MAX_NEW_TOKENS[size]` tokens; a reply still running at the
cutoff is judged as written so far. Every decoding step reads all the weights, so the cutoff sets
the cost: the quick cutoff (16 tokens) keeps the whole quick suite within 15 s on a 2-core CPU, and
constraints that need a finished reply (valid JSON, an end phrase, quotes) show mostly in the full
size (64 tokens). The score is strict prompt-level accuracy: the share of replies
that satisfy their constraint. The checks follow IFEval's (keywords match as case-insensitive
substrings, forbidden words as whole words, bullets are lines starting with "*" or "-").

A reply counts only when it is a real reply: it contains a letter and mentions the prompt's subject
(one of a few stems, such as "cat" for "Describe a cat", never a word the constraint itself asks
for). Without this gate a broken model passes the negative constraints (no commas, fewer than N
words, avoid a word) with short garbage: Wanda at 70% on the embedded model scored 0.33 against the
dense model's 0.42 that way. The quick size asks the first prompt of every constraint, the full size
all three. Width pruning is reported to improve instruction following while it costs factual knowledge.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from workbench.probes import EXACT_MATCH_FLIPS, PROBES, Probe, ProbeContext, right_or_wrong
from workbench.probes._generate import chat_prompt, encode, greedy_generate

MAX_NEW_TOKENS = {"quick": 16, "full": 64}


def _words(text: str) -> list[str]:
    return re.findall(r"\b\w[\w'-]*\b", text)


def _lowercase(reply: str) -> bool:
    return reply == reply.lower()


def _uppercase(reply: str) -> bool:
    return reply == reply.upper()


def _fewer_words(reply: str, limit: int) -> bool:
    return len(_words(reply)) < limit


def _keywords(reply: str, words: list[str]) -> bool:
    return all(re.search(re.escape(w), reply, flags=re.IGNORECASE) for w in words)


def _forbidden(reply: str, words: list[str]) -> bool:
    return not any(re.search(rf"\b{re.escape(w)}\b", reply, flags=re.IGNORECASE) for w in words)


def _bullets(reply: str, count: int) -> bool:
    return len(re.findall(r"^\s*(?:\*[^*]|-\s).*$", reply, flags=re.MULTILINE)) == count


def _json(reply: str) -> bool:
    text = reply.strip()
    text = re.sub(r"^```(?:json|JSON|Json)?\s*", "", text)
    text = re.sub(r"\s*```$", "", text)
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _ends_with(reply: str, phrase: str) -> bool:
    return reply.strip().strip('"').lower().endswith(phrase.strip().lower())


def _no_commas(reply: str) -> bool:
    return "," not in reply


def _starts_with(reply: str, word: str) -> bool:
    words = _words(reply)
    return bool(words) and words[0].lower() == word.lower()


def _title(reply: str) -> bool:
    return re.search(r"<<[^\n<>]+>>", reply) is not None


def _quoted(reply: str) -> bool:
    text = reply.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


CHECKS = {
    "lowercase": _lowercase,
    "uppercase": _uppercase,
    "fewer_words": _fewer_words,
    "keywords": _keywords,
    "forbidden_words": _forbidden,
    "bullets": _bullets,
    "json": _json,
    "ends_with": _ends_with,
    "no_commas": _no_commas,
    "starts_with": _starts_with,
    "title": _title,
    "quoted": _quoted,
}


def on_topic(reply: str, topic: tuple[str, ...]) -> bool:
    """Whether `reply` mentions its prompt's subject: any of the `topic` stems, case-insensitively."""
    text = reply.lower()
    return any(stem in text for stem in topic)


def follows(kind: str, reply: str, args: dict | None = None, topic: tuple[str, ...] = ()) -> bool:
    """Whether `reply` is a real reply (a letter, on topic when a topic is given) that satisfies the
    constraint `kind` with its arguments."""
    if not any(ch.isalpha() for ch in reply) or (topic and not on_topic(reply, topic)):
        return False
    return CHECKS[kind](reply, **(args or {}))


@dataclass(frozen=True)
class Instruction:
    """One prompt, the stems an on-topic reply mentions, and the constraint the reply must satisfy."""

    kind: str
    prompt: str
    topic: tuple[str, ...]
    args: dict = field(default_factory=dict)


FRUITS = ("fruit", "apple", "banana", "orange", "grape", "mango", "pear", "cherr", "berr", "lemon", "peach", "melon",
          "kiwi", "plum", "pineapple")
ANIMALS = ("animal", "dog", "cat", "lion", "tiger", "elephant", "bird", "horse", "cow", "fish", "bear", "rabbit",
           "monkey", "wolf", "fox", "giraffe", "zebra")
COLORS = ("color", "colour", "red", "blue", "green", "yellow", "orange", "purple", "black", "white", "pink", "brown",
          "gray", "grey")
INSTRUCTIONS = (
    Instruction("lowercase", "Write one sentence about the ocean. Your entire response must be in lowercase letters, with no capital letters at all.",
                ("ocean", "sea")),
    Instruction("lowercase", "Describe your favorite season in two sentences. Use only lowercase letters; no capital letters are allowed.",
                ("season", "spring", "summer", "autumn", "fall", "winter")),
    Instruction("lowercase", "Give a short tip for staying healthy. Your whole answer must be written in lowercase letters only.",
                ("health", "exercise", "water", "sleep", "eat", "diet", "food", "active", "walk")),
    Instruction("uppercase", "Write one sentence about rain. Your entire response must be in English capital letters only.", ("rain",)),
    Instruction("uppercase", "Tell me what a doctor does in one sentence. Write your whole answer in CAPITAL LETTERS.",
                ("doctor", "patient", "health", "medic", "ill", "sick", "treat")),
    Instruction("uppercase", "Give one reason to read books. Your answer must be in uppercase letters only.", ("book", "read")),
    Instruction("fewer_words", "Describe a cat. Answer in fewer than 12 words.", ("cat", "feline", "kitten"), {"limit": 12}),
    Instruction("fewer_words", "What is the sun? Answer in fewer than 15 words.", ("sun", "star"), {"limit": 15}),
    Instruction("fewer_words", "Explain what a computer is in fewer than 20 words.",
                ("computer", "machine", "device", "program", "data", "electronic"), {"limit": 20}),
    Instruction("keywords", "Write a short sentence about winter. Include the word 'snow'.", ("winter", "cold", "ice", "frost", "white"),
                {"words": ["snow"]}),
    Instruction("keywords", "Write a short sentence about a city. Include the words 'bridge' and 'river'.", ("city", "town", "street", "urban"),
                {"words": ["bridge", "river"]}),
    Instruction("keywords", "Write one sentence about breakfast that mentions 'coffee'.", ("breakfast", "morning", "cup", "drink", "eat"),
                {"words": ["coffee"]}),
    Instruction("forbidden_words", "Write one sentence about trees. Do not use the word 'green'.", ("tree",), {"words": ["green"]}),
    Instruction("forbidden_words", "Describe the sky on a clear day without using the word 'blue'.", ("sky",), {"words": ["blue"]}),
    Instruction("forbidden_words", "Write one sentence about the sea without using the word 'water'.", ("sea", "ocean", "wave"),
                {"words": ["water"]}),
    Instruction("bullets", "Name three fruits as a markdown list with exactly 3 bullet points that start with '* '.", FRUITS,
                {"count": 3}),
    Instruction("bullets", "List exactly 2 benefits of exercise as markdown bullet points, each line starting with '* '.",
                ("health", "exercise", "heart", "weight", "strength", "strong", "mood", "energy", "fit", "muscle", "sleep", "stress"),
                {"count": 2}),
    Instruction("bullets", "Give exactly 4 colors as a bulleted list, one per line, each starting with '* '.", COLORS, {"count": 4}),
    Instruction("json", "Give the name and age of a person called Ana who is 30. Wrap your entire answer in JSON format.", ("ana",)),
    Instruction("json", "Describe a book with a title and an author. Your entire output must be valid JSON.", ("title", "author")),
    Instruction("json", "List two animals in JSON format. Output only JSON.", ANIMALS),
    Instruction("ends_with", "Write one sentence about dogs. End your response with the exact phrase 'Is there anything else?'",
                ("dog",), {"phrase": "Is there anything else?"}),
    Instruction("ends_with", "Say goodbye to a colleague in one sentence. Finish your response with the exact phrase 'See you soon.'",
                ("goodbye", "bye", "farewell", "colleague"), {"phrase": "See you soon."}),
    Instruction("ends_with", "Describe a sunset in one sentence, and end it with the exact words 'The end.'", ("sun", "sky"),
                {"phrase": "The end."}),
    Instruction("no_commas", "Write a sentence about the sun. Do not use any commas in your response.", ("sun",)),
    Instruction("no_commas", "Describe a dog in one sentence without using any commas.", ("dog",)),
    Instruction("no_commas", "Tell me about the moon in one short sentence. Commas are not allowed.", ("moon",)),
    Instruction("starts_with", "Say hello to a new student. Start your answer with the word 'Welcome'.",
                ("student", "class", "school", "hello"), {"word": "Welcome"}),
    Instruction("starts_with", "Answer the question 'Do cats sleep a lot?' and start your reply with the word 'Yes'.", ("cat", "sleep"),
                {"word": "Yes"}),
    Instruction("starts_with", "Give advice about sleep. Begin your answer with the word 'Sleep'.", ("rest", "bed", "night", "hours"),
                {"word": "Sleep"}),
    Instruction("title", "Write a title for a poem about the moon. Wrap the title in double angular brackets, like <<title>>.", ("moon",)),
    Instruction("title", "Write a short story title about a dragon, wrapped in double angular brackets such as <<title>>.", ("dragon",)),
    Instruction("title", "Suggest a name for a bakery. Put the name in double angular brackets, like <<name>>.",
                ("bak", "bread", "cake", "pastr", "oven", "flour", "dough", "cookie", "muffin", "loaf", "crumb")),
    Instruction("quoted", "Write a short greeting. Wrap your entire response in double quotation marks.",
                ("hello", "greet", "welcome", "good morning", "good day", "hey")),
    Instruction("quoted", "Give a famous saying about time. Wrap your whole answer in double quotation marks.", ("time",)),
    Instruction("quoted", "Write one sentence about music and put your entire answer inside double quotes.", ("music", "song", "melod", "sound")),
)


def select(size: str) -> list[Instruction]:
    """The prompts a size asks: the first of every constraint for quick, all for full."""
    if size == "full":
        return list(INSTRUCTIONS)
    seen: dict[str, Instruction] = {}
    for instruction in INSTRUCTIONS:
        seen.setdefault(instruction.kind, instruction)
    return list(seen.values())


@PROBES.register("instructions")
class Instructions(Probe):
    """Share of replies that satisfy their verifiable constraint; the floor is 0."""

    name = "instructions"
    metric = "prompt accuracy"
    higher_is_better = True
    tolerance_items = EXACT_MATCH_FLIPS
    floor = 0.0

    def measure(self, ctx: ProbeContext, size: str):
        asked = select(size)
        prompts = [encode(ctx.tokenizer, chat_prompt(ctx.tokenizer, i.prompt)) for i in asked]
        replies = greedy_generate(ctx.model, ctx.tokenizer, prompts, MAX_NEW_TOKENS[size], ctx.device,
                                  cancel=ctx.check_cancel, batch_size=len(prompts))
        passed = [follows(i.kind, reply, i.args, i.topic) for i, reply in zip(asked, replies)]
        by_kind: dict[str, list[bool]] = {}
        for instruction, ok in zip(asked, passed):
            by_kind.setdefault(instruction.kind, []).append(ok)
        details = {
            "by_constraint": {kind: sum(oks) / len(oks) for kind, oks in by_kind.items()},
            "passed": sum(passed),
            "max_new_tokens": MAX_NEW_TOKENS[size],
            "mean_words": sum(len(_words(r)) for r in replies) / len(replies),
        }
        return sum(passed) / len(asked), len(asked), details, right_or_wrong(passed)
