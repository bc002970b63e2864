"""A small English-like encyclopedic corpus the package generates itself.

A fresh clone has no downloaded data, yet the quickstart, the tests and the
notebooks must still pretrain something. Random word salad would teach a
masked-LM nothing, so this generator writes short Wikipedia-style articles with
real, learnable structure:

* a fixed **world** (built from a constant seed, the same for every corpus):
  real countries and cities, with fictional but *consistent* facts: each city
  has one population, rank, founding century and university; each sports club
  has one city, league, stadium, founding year, colours and rival; each league
  has one founding year (so "the 57th season" always matches the year);
* per-document **entities** (people) whose facts stay consistent inside the
  document: pronoun and gendered nouns agree, nationality follows the birth
  country, ages at death follow the dates, career years follow the birth year;
* grammatical agreement: a/an, singular/plural counts, tense (alive people
  "is", dead people "was"; active athletes "plays", retired ones "played").

Document ``i`` of seed ``s`` depends only on ``(s, i)``, so a corpus of N
documents is a prefix of any longer corpus with the same seed.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tlm_jax.errors import TLMError

#: Bump when the generated text changes, so token caches keyed on it are rebuilt.
SYNTHETIC_VERSION = 1

_PRESENT_YEAR = 2020
_MIN_WORDS = 50
_MAX_WORDS = 200

# (country, adjective, cities from largest to smallest, plays ice hockey)
_COUNTRIES: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    ("France", "French", ("Paris", "Marseille", "Lyon", "Toulouse", "Nantes"), True),
    ("Germany", "German", ("Berlin", "Hamburg", "Munich", "Cologne", "Leipzig"), True),
    ("Italy", "Italian", ("Rome", "Milan", "Naples", "Turin", "Florence"), True),
    ("Spain", "Spanish", ("Madrid", "Barcelona", "Valencia", "Seville", "Bilbao"), False),
    ("England", "English", ("London", "Birmingham", "Manchester", "Leeds", "Bristol"), True),
    ("Canada", "Canadian", ("Toronto", "Montreal", "Calgary", "Ottawa", "Halifax"), True),
    ("Brazil", "Brazilian", ("Rio de Janeiro", "Salvador", "Fortaleza", "Recife"), False),
    ("Japan", "Japanese", ("Tokyo", "Osaka", "Nagoya", "Sapporo", "Kyoto"), True),
    ("Australia", "Australian", ("Sydney", "Melbourne", "Brisbane", "Perth", "Adelaide"), False),
    ("Sweden", "Swedish", ("Stockholm", "Gothenburg", "Malmo", "Uppsala", "Lund"), True),
    ("Austria", "Austrian", ("Vienna", "Graz", "Linz", "Salzburg", "Innsbruck"), True),
    ("Argentina", "Argentine", ("Buenos Aires", "Cordoba", "Rosario", "Mendoza"), False),
    ("Poland", "Polish", ("Warsaw", "Krakow", "Lodz", "Wroclaw", "Gdansk"), True),
    ("Ireland", "Irish", ("Dublin", "Cork", "Limerick", "Galway"), False),
    ("India", "Indian", ("Mumbai", "Delhi", "Bangalore", "Chennai", "Pune"), False),
    ("Mexico", "Mexican", ("Guadalajara", "Monterrey", "Puebla", "Tijuana"), False),
    ("Egypt", "Egyptian", ("Cairo", "Alexandria", "Giza", "Luxor"), False),
    ("Norway", "Norwegian", ("Oslo", "Bergen", "Trondheim", "Stavanger"), True),
)

_MALE = (
    "James", "Thomas", "Daniel", "Marco", "Lukas", "Pierre", "Carlos", "Jonas", "Kenji",
    "Ravi", "Oliver", "Henrik", "Pablo", "Adam", "Samuel", "Victor", "Felix", "Omar",
    "Liam", "Matteo", "Hugo", "Erik", "Diego", "Jan", "Patrick", "Hiroshi", "Anton",
    "Leon", "Martin", "Arjun",
)
_FEMALE = (
    "Anna", "Maria", "Sophie", "Elena", "Laura", "Clara", "Yuki", "Priya", "Ingrid",
    "Lucia", "Emma", "Julia", "Sara", "Nora", "Camille", "Isabel", "Marta", "Hannah",
    "Alice", "Chiara", "Greta", "Leila", "Aoife", "Olivia", "Mia", "Paula", "Eva",
    "Rosa", "Helena", "Ines",
)
_SURNAMES = (
    "Berg", "Moreau", "Rossi", "Garcia", "Schmidt", "Novak", "Tanaka", "Kelly", "Silva",
    "Larsen", "Fischer", "Bianchi", "Lopez", "Dubois", "Kowalski", "Murphy", "Sato",
    "Andersson", "Costa", "Weber", "Romano", "Martin", "Nowak", "Walsh", "Hansen",
    "Ferreira", "Keller", "Conti", "Ortiz", "Lambert", "Wagner", "Gallo", "Nakamura",
    "Byrne", "Lindqvist", "Mendes", "Hoffmann", "Ricci", "Vidal", "Sharma", "Patel",
    "Hughes", "Fontaine", "Brennan", "Jensen", "Marino", "Kraus", "Santos",
)
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August",
    "September", "October", "November", "December",
)
_NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "ten", "eleven", "twelve",
)
_RANK_WORDS = ("", "second ", "third ", "fourth ", "fifth ")
_COLOURS = ("red", "blue", "white", "black", "green", "yellow", "orange", "purple", "gold")
_INDUSTRIES = (
    "shipbuilding", "tourism", "banking", "textiles", "steel production", "wine making",
    "publishing", "software", "fishing", "car manufacturing", "chemicals", "agriculture",
)
_LANDMARKS = ("cathedral", "old town hall", "central station", "botanical garden", "city museum")
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

# sport -> (club name patterns, venue patterns, positions, unit, unit plural, game plural)
_SPORTS: dict[str, dict[str, tuple[str, ...]]] = {
    "football": {
        "club": ("FC {city}", "{city} United", "Sporting {city}", "Athletic {city}",
                 "{city} Rovers", "Real {city}"),
        "venue": ("{surname} Stadium", "{city} Municipal Stadium", "{surname} Park"),
        "position": ("goalkeeper", "defender", "midfielder", "forward"),
        "unit": ("goal", "goals", "matches"),
    },
    "basketball": {
        "club": ("{city} Falcons", "{city} Lions", "{city} Comets", "{city} Giants",
                 "{city} Sharks", "{city} Knights"),
        "venue": ("{surname} Arena", "{city} Sports Hall", "{city} Arena"),
        "position": ("point guard", "shooting guard", "small forward", "power forward",
                     "center"),
        "unit": ("point", "points", "games"),
    },
    "ice hockey": {
        "club": ("{city} Wolves", "{city} Bears", "{city} Storm", "{city} Eagles",
                 "{city} Flames", "{city} Hawks"),
        "venue": ("{surname} Ice Hall", "{city} Ice Arena", "{surname} Arena"),
        "position": ("goaltender", "defenceman", "winger", "centre"),
        "unit": ("goal", "goals", "games"),
    },
}
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


@dataclass(frozen=True)
class _City:
    name: str
    country: str
    adj: str
    rank: int
    population: int
    century: int
    university_year: int
    industries: tuple[str, str]
    landmark: str
    teams: list[_Team] = field(default_factory=list, compare=False, hash=False)


@dataclass(frozen=True)
class _League:
    name: str
    sport: str
    country: str
    founded: int
    teams: list[_Team] = field(default_factory=list, compare=False, hash=False)
    # year -> champion; titles and season articles are both derived from it, so they agree.
    champions: dict[int, _Team] = field(default_factory=dict, compare=False, hash=False)


@dataclass(eq=False)
class _Team:
    name: str
    sport: str
    city: _City
    league: _League
    founded: int
    venue: str
    capacity: int
    colours: tuple[str, str]
    strength: float
    titles: int = 0
    last_title: int = 0


@dataclass
class _World:
    cities: list[_City]
    leagues: list[_League]
    teams: list[_Team]
    rivals: dict[str, _Team]
    by_country: dict[str, list[_City]]


@functools.lru_cache(maxsize=1)
def _world() -> _World:
    # A constant seed: the world's facts must be identical in every corpus, for every seed.
    rng = random.Random("tlm-synthetic-world-v1")
    cities: list[_City] = []
    leagues: list[_League] = []
    teams: list[_Team] = []
    by_country: dict[str, list[_City]] = {}
    for country, adj, names, hockey in _COUNTRIES:
        pop = rng.randrange(2_000_000, 6_000_000)
        country_cities = []
        for rank, name in enumerate(names):
            city = _City(
                name=name, country=country, adj=adj, rank=rank, population=pop,
                century=rng.randrange(9, 18) if rank else rng.randrange(3, 12),
                university_year=rng.randrange(1400, 1950),
                industries=tuple(rng.sample(_INDUSTRIES, 2)),  # type: ignore[arg-type]
                landmark=rng.choice(_LANDMARKS),
            )
            country_cities.append(city)
            # Ranks must agree with populations, so each next city is strictly smaller.
            pop = int(pop * rng.uniform(0.45, 0.85))
        cities += country_cities
        by_country[country] = country_cities
        sports = ["football", "basketball"] + (["ice hockey"] if hockey else [])
        for sport in sports:
            league_name = {
                "football": f"{adj} Football League",
                "basketball": f"{adj} Basketball Association",
                "ice hockey": f"{adj} Hockey League",
            }[sport]
            league = _League(league_name, sport, country,
                             founded=rng.randrange(1890, 1935) if sport == "football"
                             else rng.randrange(1930, 1975))
            leagues.append(league)
            spec = _SPORTS[sport]
            for city in country_cities:
                founded = rng.randrange(league.founded - 20, league.founded + 40)
                team = _Team(
                    name=rng.choice(spec["club"]).format(city=city.name),
                    sport=sport, city=city, league=league, founded=founded,
                    venue=rng.choice(spec["venue"]).format(
                        city=city.name, surname=rng.choice(_SURNAMES)),
                    capacity=rng.randrange(3, 60) * 1000 + rng.randrange(0, 1000),
                    colours=tuple(rng.sample(_COLOURS, 2)),  # type: ignore[arg-type]
                    strength=rng.uniform(0.2, 3.0),
                )
                league.teams.append(team)
                city.teams.append(team)
                teams.append(team)
    for league in leagues:
        for year in range(league.founded, _PRESENT_YEAR):
            entrants = [t for t in league.teams if t.founded < year]
            if len(entrants) >= 2:
                champion = rng.choices(entrants, [t.strength for t in entrants])[0]
                league.champions[year] = champion
                champion.titles += 1
                champion.last_title = year
    rivals = {}
    for league in leagues:
        for i, team in enumerate(league.teams):
            rivals[team.name] = league.teams[(i + 1) % len(league.teams)]
    return _World(cities, leagues, teams, rivals, by_country)


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


def _date(rng: random.Random, year: int) -> tuple[int, int, int, str]:
    month, day = rng.randrange(1, 13), rng.randrange(1, 29)
    return year, month, day, f"{_MONTHS[month - 1]} {day}, {year}"


def _age(birth: tuple[int, int, int, str], when: tuple[int, int, int, str]) -> int:
    return when[0] - birth[0] - ((when[1], when[2]) < (birth[1], birth[2]))


def _title(rng: random.Random) -> str:
    return f"The {rng.choice(_TITLE_ADJ)} {rng.choice(_TITLE_NOUN)}"


class _Person:
    """A person whose facts stay consistent across the sentences of one document."""

    def __init__(self, rng: random.Random, w: _World, *, female: bool | None = None,
                 city: _City | None = None, min_birth: int = 1850,
                 max_birth: int = 2000) -> None:
        self.female = rng.random() < 0.5 if female is None else female
        self.first = rng.choice(_FEMALE if self.female else _MALE)
        self.last = rng.choice(_SURNAMES)
        self.name = f"{self.first} {self.last}"
        self.he, self.his, self.him = ("she", "her", "her") if self.female else ("he", "his", "him")
        self.He, self.His = self.he.capitalize(), self.his.capitalize()
        self.city = city or rng.choice(w.cities)
        self.country, self.adj = self.city.country, self.city.adj
        self.alive = rng.random() < 0.6
        if self.alive:
            birth_year = rng.randrange(max(1945, min_birth), max_birth)
        else:
            birth_year = rng.randrange(min_birth, max(min_birth + 1, 1935))
        self.birth = _date(rng, birth_year)
        self.death = None
        if not self.alive:
            self.death = _date(rng, birth_year + rng.randrange(50, 90))
            if self.death[0] >= _PRESENT_YEAR:  # nobody dies in the future
                self.alive, self.death = True, None
        self.is_ = "is" if self.alive else "was"

    def year(self, age: int) -> int:
        return self.birth[0] + age

    def dates(self) -> str:
        if self.death is None:
            return f"born {self.birth[3]}"
        return f"{self.birth[3]} – {self.death[3]}"


def _person_doc(rng: random.Random, w: _World) -> list[str]:
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
        p = _Person(rng, w, city=home, min_birth=league.founded - 16, max_birth=1991)
        occupation = _ATHLETE[sport]
        unit, units, games = _SPORTS[sport]["unit"]
        position = rng.choice(_SPORTS[sport]["position"])
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
            retired = min(p.year(rng.randrange(32, 38)), _PRESENT_YEAR - 1)
            extra.append(f"{p.He} retired in {retired} and later worked "
                         f"as a coach in {second.city.name}.")
    elif kind == "politician":
        p = _Person(rng, w, max_birth=1966)
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
        p = _Person(rng, w, max_birth=1976)
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
        p = _Person(rng, w, min_birth={"actor": 1885, "singer": 1925}.get(occupation, 1850),
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
    partner = _Person(rng, w, female=not p.female)
    kids = rng.randrange(0, 5)
    married = p.year(rng.randrange(24, 40))
    closing = []
    if married < _PRESENT_YEAR and (p.death is None or married < p.death[0]):
        children = _count(kids, "child", "children")
        closing.append(f"{p.He} married {partner.name} in {married}; they "
                       f"{'have' if p.alive else 'had'} {children}.")
    if p.death is not None:
        place = rng.choice([p.city, rng.choice(w.cities)])
        closing.append(f"{p.He} died in {place.name} on {p.death[3]}, at the age of "
                       f"{_age(p.birth, p.death)}.")
    # Life events stay in chronological order: the death sentence comes last.
    return out + extra + closing


def _city_doc(rng: random.Random, w: _World) -> list[str]:
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
    people = [_Person(rng, w) for _ in range(2)]
    out.append(f"Notable people from {c.name} include {people[0].name} and {people[1].name}.")
    return out


def _team_doc(rng: random.Random, w: _World) -> list[str]:
    t = rng.choice(w.teams)
    rival = w.rivals[t.name]
    coach = _Person(rng, w)
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
    player = _Person(rng, w)
    lo = max(t.founded + 1, 1950)
    start = rng.randrange(lo, max(lo + 1, 2015))
    out.append(f"Former players include {player.name}, who played for {t.name} from {start} "
               f"to {start + rng.randrange(1, 6)}.")
    return out


def _season_doc(rng: random.Random, w: _World) -> list[str]:
    league = rng.choice(w.leagues)
    year = rng.choice(list(league.champions))
    # A season's facts come from its own seed, so every article about it tells the same story.
    srng = random.Random(f"tlm-synthetic-season:{league.name}:{year}")
    winner = league.champions[year]
    entrants = [t for t in league.teams if t.founded < year]
    second = srng.choice([t for t in entrants if t is not winner])
    scorer = _Person(srng, w, female=False)
    unit, units, games = _SPORTS[league.sport]["unit"]
    n = len(entrants)
    rounds = {"football": 2, "basketball": 4, "ice hockey": 4}[league.sport]
    top = srng.randrange(12, 40)
    # Per-article detail (from the document's rng) that cannot contradict the season facts.
    player, club = _Person(rng, w), rng.choice(entrants)
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
        f"The season began in {_MONTHS[srng.randrange(7, 10)]} {year}.",
    ]


def _document(seed: int, index: int) -> str:
    rng = random.Random(f"tlm-synthetic:{seed}:{index}")
    w = _world()
    makers = (_person_doc, _person_doc, _person_doc, _city_doc, _team_doc, _season_doc)
    sentences = rng.choice(makers)(rng, w)
    # Short articles get a second, related article appended, like a merged stub.
    while sum(len(s.split()) for s in sentences) < _MIN_WORDS:
        sentences += rng.choice(makers)(rng, w)
    kept, words = [], 0
    for s in sentences:
        n = len(s.split())
        if kept and words + n > _MAX_WORDS:
            break
        kept.append(s)
        words += n
    return " ".join(kept)


def synthetic_corpus(num_docs: int = 2000, seed: int = 0) -> Iterator[str]:
    """Yield ``num_docs`` synthetic encyclopedic documents (50-200 words each).

    Deterministic given ``seed``; document ``i`` depends only on ``(seed, i)``,
    so a shorter corpus is a prefix of a longer one with the same seed.

    Args:
        num_docs: number of documents to generate.
        seed: selects the documents; the world facts do not depend on it.

    Raises:
        TLMError: if ``num_docs`` is negative.
    """
    if num_docs < 0:
        raise TLMError(f"synthetic corpus size num_docs={num_docs} is negative",
                       "give num_docs >= 0")
    return (_document(seed, i) for i in range(num_docs))


#: Article kinds of :func:`synthetic_labelled_texts`, in label order.
SYNTHETIC_KINDS = ("person", "city", "team", "season")
_KIND_MAKERS = {"person": _person_doc, "city": _city_doc, "team": _team_doc,
                "season": _season_doc}
# Fewest sentences any maker writes after its title sentence (a person article has 5-9).
_MIN_BODY_SENTENCES = 4


def synthetic_labelled_texts(per_kind: int = 1000, seed: int = 0, window: int = 2
                             ) -> Iterator[tuple[str, str]]:
    """Yield ``(kind, text)`` pairs: short passages labelled by the kind of article they come from.

    Candidate ``i`` is an article of kind ``SYNTHETIC_KINDS[i % 4]`` written from
    its own generator seeded with ``("tlm-synthetic-task", seed, i)``: a stream
    separate from :func:`synthetic_corpus`'s, so no article behind these texts is
    a pretraining document (the world facts are shared, as facts recur across
    Wikipedia articles, so a sentence stating e.g. a city's population can occur
    in both). The text is ``window`` consecutive sentences starting at a seeded
    position *after* the title sentence, because that sentence names the kind
    outright ("X is a city in ..."). A passage already yielded for its kind is
    skipped, so the texts are unique and a train/test split cannot leak.

    Kinds are interleaved (person, city, team, season, person, ...) until each
    has ``per_kind`` texts; the first ``n`` texts of a kind are the same for any
    ``per_kind >= n``.

    Raises:
        TLMError: ``per_kind < 0``, ``window`` outside ``1..4``, or too few
            distinct passages of a kind for ``per_kind``.
    """
    if per_kind < 0:
        raise TLMError(f"per_kind={per_kind} is negative", "give per_kind >= 0")
    if not 1 <= window <= _MIN_BODY_SENTENCES:
        raise TLMError(f"window={window} sentences is outside 1..{_MIN_BODY_SENTENCES}",
                       f"use a window of 1 to {_MIN_BODY_SENTENCES} sentences")
    w = _world()
    seen: dict[str, set[str]] = {k: set() for k in SYNTHETIC_KINDS}
    # Windows of city/team articles repeat often (their facts are fixed); give up
    # long before looping forever if a kind runs out of distinct passages.
    limit = len(SYNTHETIC_KINDS) * (50 * per_kind + 100)
    i = 0
    while any(len(s) < per_kind for s in seen.values()):
        if i >= limit:
            short = {k: len(s) for k, s in seen.items() if len(s) < per_kind}
            raise TLMError(f"only {short} distinct {window}-sentence passages found in {i} "
                           f"synthetic articles, {per_kind} per kind requested",
                           "request fewer rows per kind or a longer window")
        kind = SYNTHETIC_KINDS[i % len(SYNTHETIC_KINDS)]
        if len(seen[kind]) < per_kind:
            rng = random.Random(f"tlm-synthetic-task:{seed}:{i}")
            body = _KIND_MAKERS[kind](rng, w)[1:]
            start = rng.randrange(max(len(body) - window, 0) + 1)
            text = " ".join(body[start:start + window])
            if len(body) >= window and text not in seen[kind]:
                seen[kind].add(text)
                yield kind, text
        i += 1


def write_synthetic_corpus(path: str | os.PathLike[str], num_docs: int = 2000,
                           seed: int = 0) -> Path:
    """Write :func:`synthetic_corpus` as gzip JSONL (``{"id": i, "text": ...}`` per line).

    The gzip header carries no timestamp or file name, so the bytes (and thus
    :func:`tlm_jax.data.sources.source_fingerprint`) depend only on the content.
    Readable with ``iter_documents("jsonl", [path])``.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                               mtime=0) as gz:
        for i, text in enumerate(synthetic_corpus(num_docs, seed)):
            gz.write((json.dumps({"id": i, "text": text}, ensure_ascii=False) + "\n")
                     .encode("utf-8"))
    return path
