"""Default container names as docker makes them: adjective_surname (docker's
namesgenerator: adjectives, and surnames of notable scientists and hackers), with a
digit appended on retries after a collision."""

from __future__ import annotations

import random

ADJECTIVES = (
    "admiring", "adoring", "affectionate", "agitated", "amazing", "angry", "awesome",
    "blissful", "bold", "boring", "brave", "busy", "charming", "clever", "compassionate",
    "competent", "condescending", "confident", "cool", "cranky", "crazy", "dazzling",
    "determined", "distracted", "dreamy", "eager", "ecstatic", "elastic", "elated",
    "elegant", "eloquent", "epic", "exciting", "fervent", "festive", "flamboyant",
    "focused", "friendly", "frosty", "funny", "gallant", "gifted", "goofy", "gracious",
    "great", "happy", "hardcore", "heuristic", "hopeful", "hungry", "infallible",
    "inspiring", "intelligent", "interesting", "jolly", "jovial", "keen", "kind",
    "laughing", "loving", "lucid", "magical", "modest", "musing", "mystifying", "naughty",
    "nervous", "nice", "nifty", "nostalgic", "objective", "optimistic", "peaceful",
    "pedantic", "pensive", "practical", "priceless", "quirky", "quizzical", "recursing",
    "relaxed", "reverent", "romantic", "sad", "serene", "sharp", "silly", "sleepy",
    "stoic", "strange", "stupefied", "suspicious", "sweet", "tender", "thirsty",
    "trusting", "unruffled", "upbeat", "vibrant", "vigilant", "vigorous", "wizardly",
    "wonderful", "xenodochial", "youthful", "zealous", "zen",
)
SURNAMES = (
    "agnesi", "albattani", "allen", "almeida", "archimedes", "ardinghelli", "aryabhata",
    "babbage", "banach", "bardeen", "bartik", "bell", "bhabha", "black", "blackwell",
    "bohr", "booth", "borg", "bose", "boyd", "brahmagupta", "brattain", "brown", "carson",
    "cerf", "chandrasekhar", "clarke", "colden", "cori", "cray", "curie", "darwin",
    "davinci", "dijkstra", "dubinsky", "easley", "edison", "einstein", "elion", "engelbart",
    "euclid", "euler", "faraday", "fermat", "fermi", "feynman", "franklin", "galileo",
    "gauss", "goldberg", "goldwasser", "goodall", "hamilton", "hawking", "heisenberg",
    "hermann", "hodgkin", "hopper", "hypatia", "jackson", "jang", "jennings", "johnson",
    "kalam", "kapitsa", "keller", "kepler", "knuth", "kowalevski", "lalande", "lamarr",
    "lamport", "leakey", "lehmann", "lovelace", "lumiere", "mahavira", "margulis",
    "mayer", "mccarthy", "mclean", "meitner", "mendel", "minsky", "mirzakhani", "morse",
    "napier", "nash", "newton", "nobel", "noether", "pare", "pascal", "pasteur", "payne",
    "perlman", "pike", "poincare", "ptolemy", "raman", "ramanujan", "ride", "ritchie",
    "rosalind", "sammet", "shamir", "shannon", "shaw", "sinoussi", "snyder", "stonebraker",
    "swartz", "tesla", "thompson", "torvalds", "turing", "volhard", "wescoff", "wiles",
    "williams", "wilson", "wing", "wozniak", "wright", "yalow", "yonath",
)


def random_name(retry: int = 0) -> str:
    """adjective_surname; after a collision (retry > 0) with a digit, as docker's."""
    rng = random.SystemRandom()
    while True:
        name = f"{rng.choice(ADJECTIVES)}_{rng.choice(SURNAMES)}"
        if name != "boring_wozniak":  # Steve Wozniak is not boring (docker's rule)
            break
    return f"{name}{rng.randint(0, 9)}" if retry else name
