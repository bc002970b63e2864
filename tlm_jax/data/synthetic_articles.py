"""The article writers of the synthetic corpus (:mod:`tlm_jax.data.synthetic`).

Each writer takes a seeded generator and the fixed :func:`~tlm_jax.data.synthetic_world.world`
and returns the sentences of one short Wikipedia-style article: a person, a city,
a club or a league season.
"""

from __future__ import annotations

import random

from tlm_jax.data.synthetic_world import MONTHS, PRESENT_YEAR, SPORTS, Person, World

_NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "ten", "eleven", "twelve",
)
_RANK_WORDS = ("", "second ", "third ", "fourth ", "fifth ")
_PARTIES = (
    "Liberal Party", "Social Democratic Party", "Green Party", "Conservative Party",
    "Labour Party", "Centre Party",
)
_PARENT_JOBS = (
    ("farmer", "farmers"), ("teacher", "teachers"), ("merchant", "merchants"),
    ("doctor", "doctors"), ("fisherman", "fishermen"), ("musician", "musicians"),
    ("carpenter", "carpenters"), ("lawyer", "lawyers"),
)
_TITLE_ADJ = (
    "Silent", "Last", "Golden", "Broken", "Hidden", "Distant", "Northern", "Endless",
    "Quiet", "Burning", "Forgotten", "Winter",
)
_TITLE_NOUN = (
    "River", "Garden", "Harbour", "Mountain", "Letter", "Bridge", "Summer", "Island",
    "Road", "Forest", "Light", "City",
)
_ATHLETE = {"football": "footballer", "basketball": "basketball player",
            "ice hockey": "ice hockey player"}

# occupation -> (subjects studied, research topics or work kind)
_SCIENCE = {
    "physicist": ("physics", ("superconductivity", "quantum optics", "cosmic rays",
                              "crystal structures", "plasma physics")),
    "chemist": ("chemistry", ("organic synthesis", "polymers", "catalysis",
                              "electrochemistry", "natural dyes")),
    "mathematician": ("mathematics", ("number theory", "differential equations",
                                      "probability theory", "topology", "graph theory")),
    "biologist": ("biology", ("plant genetics", "marine ecology", "bird migration",
                              "cell division", "soil bacteria")),
}
_AWARDS = ("Royal Medal", "Lorentz Prize", "Humboldt Award", "Kepler Prize", "Darwin Medal")
_ARTS = ("novelist", "composer", "painter", "singer", "actor", "architect")


def _a(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _count(n: int, singular: str, plural: str) -> str:
    if n == 0:
        return f"no {plural}"
    word = _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else f"{n:,}"
    return f"{word} {singular if n == 1 else plural}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _age(birth: tuple[int, int, int, str], when: tuple[int, int, int, str]) -> int:
    return when[0] - birth[0] - ((when[1], when[2]) < (birth[1], birth[2]))


def _title(rng: random.Random) -> str:
    return f"The {rng.choice(_TITLE_ADJ)} {rng.choice(_TITLE_NOUN)}"


def person_doc(rng: random.Random, w: World) -> list[str]:
    """The sentences of an article about a person: athlete, politician, scientist or artist."""
    kind = rng.choice(("athlete", "athlete", "politician", "science", "arts", "arts"))
    out: list[str] = []
    extra: list[str] = []
    if kind == "athlete":
        sport = rng.choice(("football", "football", "basketball", "ice hockey"))
        home = rng.choice(w.cities)
        leagues = [lg for lg in w.leagues if lg.sport == sport]
        league = rng.choice([lg for lg in leagues if lg.country == home.country] or leagues)
        # Born late enough to debut (at 17 or later) after the league was founded.
        # Born early enough that the whole career so far lies before the present.
        p = Person(rng, w, city=home, min_birth=league.founded - 16, max_birth=1991)
        occupation = _ATHLETE[sport]
        unit, units, games = SPORTS[sport]["unit"]
        position = rng.choice(SPORTS[sport]["position"])
        debut_age = rng.randrange(17, 22)
        move = p.year(debut_age + rng.randrange(2, 6))
        # Clubs must exist when joined; fall back to any club only if too few are old enough.
        first = rng.choice([t for t in league.teams if t.founded < p.year(debut_age)]
                           or league.teams)
        second = rng.choice([t for t in league.teams if t.founded < move and t is not first]
                            or [t for t in league.teams if t is not first])
        active = p.alive and p.birth[0] >= 1986
        out.append(f"{p.name} ({p.dates()}) {p.is_} {_a(p.adj)} professional {occupation} "
                   f"who {'plays' if active else 'played'} as {_a(position)}.")
        out.append(f"{p.He} was born in {p.city.name}, {p.country}, and began {p.his} career "
                   f"with {first.name} of the {league.name}.")
        out.append(f"{p.He} made {p.his} debut for {first.name} in {p.year(debut_age)} at the "
                   f"age of {debut_age}.")
        n_games = rng.randrange(20, 300)
        scored = rng.randrange(0, n_games // (3 if sport == "football" else 1) + 2)
        out.append(f"In {move}, {p.he} moved to {second.name}, where {p.he} scored "
                   f"{_count(scored, unit, units)} in {n_games} {games}.")
        won = [y for y in range(move + 1, move + 4) if league.champions.get(y) is second]
        if won:
            out.append(f"With {second.name}, {p.he} won the {league.name} title in {won[0]}.")
        caps = rng.randrange(1, 80)
        made = "has made" if p.alive else "made"
        out.append(f"{p.He} {made} {_count(caps, 'appearance', 'appearances')} "
                   f"for the {p.adj} national team.")
        if active:
            out.append(f"{p.He} currently plays for {second.name}, whose home ground is "
                       f"{second.venue}.")
        else:
            retired = min(p.year(rng.randrange(32, 38)), PRESENT_YEAR - 1)
            extra.append(f"{p.He} retired in {retired} and later worked "
                         f"as a coach in {second.city.name}.")
    elif kind == "politician":
        p = Person(rng, w, max_birth=1966)
        party = rng.choice(_PARTIES)
        out.append(f"{p.name} ({p.dates()}) {p.is_} {_a(p.adj)} politician and a member of the "
                   f"{party}.")
        out.append(f"{p.He} was born in {p.city.name}, {p.country}, and studied "
                   f"{rng.choice(('law', 'economics', 'history'))} at the University of "
                   f"{rng.choice(w.by_country[p.country]).name}.")
        elected = p.year(rng.randrange(28, 40))
        out.append(f"{p.He} was first elected to the {p.adj} parliament in {elected}.")
        start = elected + rng.randrange(2, 8)
        end = start + rng.randrange(2, 9)
        if p.death is not None and end >= p.death[0]:
            end = p.death[0]  # a term cannot outlast the mayor
        out.append(f"From {start} to {end}, {p.he} served as mayor of "
                   f"{p.city.name}, the {_RANK_WORDS[p.city.rank]}largest city in {p.country}.")
        extra.append(f"During {p.his} time as mayor, {p.he} supported the local "
                     f"{p.city.industries[0]} industry.")
        extra.append(f"{p.He} later became leader of the {party}.")
    elif kind == "science":
        p = Person(rng, w, max_birth=1976)
        occupation = rng.choice(list(_SCIENCE))
        subject, topics = _SCIENCE[occupation]
        topic = rng.choice(topics)
        uni = rng.choice(w.cities)
        out.append(f"{p.name} ({p.dates()}) {p.is_} {_a(p.adj)} {occupation} known for "
                   f"{p.his} work on {topic}.")
        out.append(f"{p.He} was born in {p.city.name}, {p.country}, and studied {subject} at the "
                   f"University of {p.city.name}.")
        out.append(f"{p.He} received {p.his} doctorate in {p.year(rng.randrange(25, 30))} with a "
                   f"thesis on {topic}.")
        out.append(f"{p.He} later became a professor of {subject} at the University of "
                   f"{uni.name}, in {uni.country}.")
        if rng.random() < 0.5:
            out.append(f"In {p.year(rng.randrange(40, 45))}, {p.he} was awarded the "
                       f"{rng.choice(_AWARDS)} for {p.his} research on {topic}.")
        extra.append(f"{p.He} wrote {_count(rng.randrange(1, 7), 'book', 'books')} on {subject}.")
    else:
        occupation = rng.choice(_ARTS)
        # Film and pop charts only exist from the 20th century on.
        p = Person(rng, w, min_birth={"actor": 1885, "singer": 1925}.get(occupation, 1850),
                    max_birth=1971)
        if occupation == "actor" and p.female:
            occupation = "actress"
        work = _title(rng)
        out.append(f"{p.name} ({p.dates()}) {p.is_} {_a(p.adj)} {occupation}.")
        out.append(f"{p.He} was born in {p.city.name}, {p.country}, to a family of "
                   f"{rng.choice(_PARENT_JOBS)[1]}.")
        y = p.year(rng.randrange(20, 32))
        if occupation == "novelist":
            out.append(f"{p.His} first novel, {work}, was published in {y}.")
            out.append(f"{p.He} wrote {_count(rng.randrange(2, 12), 'novel', 'novels')} and "
                       f"several collections of short stories.")
        elif occupation == "composer":
            out.append(f"{p.He} studied music in {rng.choice(w.cities).name} and wrote "
                       f"{p.his} first symphony in {y}.")
            out.append(f"{p.His} best known work is the opera {work}, first performed in "
                       f"{p.city.name} in {y + rng.randrange(3, 15)}.")
        elif occupation == "painter":
            out.append(f"{p.He} studied at the Academy of Fine Arts in {p.city.name}.")
            out.append(f"{p.His} painting {work} ({y}) is held by the {p.city.name} museum.")
        elif occupation == "singer":
            out.append(f"{p.His} debut album, {work}, was released in {y} and reached number "
                       f"{rng.randrange(1, 20)} on the {p.adj} charts.")
        elif occupation == "architect":
            out.append(f"{p.He} studied architecture in {rng.choice(w.cities).name}.")
            out.append(f"{p.He} designed the new {p.city.landmark} of {p.city.name}, completed "
                       f"in {y + rng.randrange(5, 12)}.")
        else:
            out.append(f"{p.He} made {p.his} film debut in {work} ({y}).")
            out.append(f"{p.He} is best known for {p.his} role in the television series "
                       f"{_title(rng)}.")
        extra.append(f"{p.His} work was strongly influenced by the {p.adj} tradition.")
    partner = Person(rng, w, female=not p.female)
    kids = rng.randrange(0, 5)
    married = p.year(rng.randrange(24, 40))
    closing = []
    if married < PRESENT_YEAR and (p.death is None or married < p.death[0]):
        children = _count(kids, "child", "children")
        closing.append(f"{p.He} married {partner.name} in {married}; they "
                       f"{'have' if p.alive else 'had'} {children}.")
    if p.death is not None:
        place = rng.choice([p.city, rng.choice(w.cities)])
        closing.append(f"{p.He} died in {place.name} on {p.death[3]}, at the age of "
                       f"{_age(p.birth, p.death)}.")
    # Life events stay in chronological order: the death sentence comes last.
    return out + extra + closing


def city_doc(rng: random.Random, w: World) -> list[str]:
    """The sentences of an article about a city."""
    c = rng.choice(w.cities)
    census = rng.randrange(2010, 2020)
    out = [
        f"{c.name} is a city in {c.country}.",
        f"It is the {_RANK_WORDS[c.rank]}largest city in {c.country}, with a population of "
        f"{c.population:,} as of {census}.",
        f"{c.name} was founded in the {_ordinal(c.century)} century.",
        f"The local economy is based on {c.industries[0]} and {c.industries[1]}.",
        f"The University of {c.name} was established in {c.university_year}.",
    ]
    for team in rng.sample(c.teams, len(c.teams)):
        out.append(f"{c.name} is home to {team.name}, {_a(team.sport)} club that plays in the "
                   f"{team.league.name}.")
    out.append(f"The {c.landmark} is one of the best known sights of {c.name}.")
    people = [Person(rng, w) for _ in range(2)]
    out.append(f"Notable people from {c.name} include {people[0].name} and {people[1].name}.")
    return out


def team_doc(rng: random.Random, w: World) -> list[str]:
    """The sentences of an article about a sports club."""
    t = rng.choice(w.teams)
    rival = w.rivals[t.name]
    coach = Person(rng, w)
    out = [
        f"{t.name} is a professional {t.sport} club based in {t.city.name}, {t.city.country}.",
        f"The club was founded in {t.founded} and plays its home games at {t.venue}, which has "
        f"a capacity of {t.capacity:,}.",
        f"{t.name} competes in the {t.league.name}.",
    ]
    if t.titles:
        out.append(f"The club has won the league {_count(t.titles, 'time', 'times')}, most "
                   f"recently in {t.last_title}.")
    else:
        out.append("The club has never won the league.")
    out.append(f"Its traditional colours are {t.colours[0]} and {t.colours[1]}.")
    out.append(f"The main rival of {t.name} is {rival.name} from {rival.city.name}.")
    out.append(f"The current head coach is {coach.name}, who joined the club in "
               f"{rng.randrange(2012, 2020)}.")
    player = Person(rng, w)
    lo = max(t.founded + 1, 1950)
    start = rng.randrange(lo, max(lo + 1, 2015))
    out.append(f"Former players include {player.name}, who played for {t.name} from {start} "
               f"to {start + rng.randrange(1, 6)}.")
    return out


def season_doc(rng: random.Random, w: World) -> list[str]:
    """The sentences of an article about one season of a league."""
    league = rng.choice(w.leagues)
    year = rng.choice(list(league.champions))
    # A season's facts come from its own seed, so every article about it tells the same story.
    srng = random.Random(f"tlm-synthetic-season:{league.name}:{year}")
    winner = league.champions[year]
    entrants = [t for t in league.teams if t.founded < year]
    second = srng.choice([t for t in entrants if t is not winner])
    scorer = Person(srng, w, female=False)
    unit, units, games = SPORTS[league.sport]["unit"]
    n = len(entrants)
    rounds = {"football": 2, "basketball": 4, "ice hockey": 4}[league.sport]
    top = srng.randrange(12, 40)
    # Per-article detail (from the document's rng) that cannot contradict the season facts.
    player, club = Person(rng, w), rng.choice(entrants)
    detail = (f"{player.name} played for {club.name} during the season and scored "
              f"{_count(rng.randrange(0, top), unit, units)}.")
    return [
        f"The {year} {league.name} season was the {_ordinal(year - league.founded + 1)} season "
        f"of the {league.name}.",
        f"{_count(n, 'team', 'teams').capitalize()} took part, and each team played "
        f"{rounds * (n - 1)} {games}.",
        f"{winner.name} won the title, finishing "
        f"{_count(srng.randrange(1, 12), 'point', 'points')} ahead of {second.name}.",
        f"The top scorer was {scorer.name} of {srng.choice(entrants).name} with "
        f"{_count(top, unit, units)}.",
        detail,
        f"{winner.name} played its home games at {winner.venue} in {winner.city.name}.",
        f"The season began in {MONTHS[srng.randrange(7, 10)]} {year}.",
    ]
