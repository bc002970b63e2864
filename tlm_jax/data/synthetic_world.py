"""The fixed world of the synthetic corpus (:mod:`tlm_jax.data.synthetic`) and its people.

Countries, cities, leagues and clubs with fictional but consistent facts, built
once from a constant seed, and :class:`Person`: a per-document entity whose
facts (pronouns, nationality, dates) agree across the sentences of one article.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

#: The year the synthetic world is written in: nobody dies and no season is played after it.
PRESENT_YEAR = 2020

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
#: Month names, January first (article dates).
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August",
    "September", "October", "November", "December",
)
_COLOURS = ("red", "blue", "white", "black", "green", "yellow", "orange", "purple", "gold")
_INDUSTRIES = (
    "shipbuilding", "tourism", "banking", "textiles", "steel production", "wine making",
    "publishing", "software", "fishing", "car manufacturing", "chemicals", "agriculture",
)
_LANDMARKS = ("cathedral", "old town hall", "central station", "botanical garden", "city museum")

# sport -> (club name patterns, venue patterns, positions, unit, unit plural, game plural)
SPORTS: dict[str, dict[str, tuple[str, ...]]] = {
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
class World:
    """The whole world: cities, leagues, clubs, each club's rival, cities by country."""

    cities: list[_City]
    leagues: list[_League]
    teams: list[_Team]
    rivals: dict[str, _Team]
    by_country: dict[str, list[_City]]


@functools.lru_cache(maxsize=1)
def world() -> World:
    """The world (built once per process from a constant seed)."""
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
            spec = SPORTS[sport]
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
        for year in range(league.founded, PRESENT_YEAR):
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
    return World(cities, leagues, teams, rivals, by_country)


def _date(rng: random.Random, year: int) -> tuple[int, int, int, str]:
    month, day = rng.randrange(1, 13), rng.randrange(1, 29)
    return year, month, day, f"{MONTHS[month - 1]} {day}, {year}"


class Person:
    """A person whose facts stay consistent across the sentences of one document."""

    def __init__(self, rng: random.Random, w: World, *, female: bool | None = None,
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
            if self.death[0] >= PRESENT_YEAR:  # nobody dies in the future
                self.alive, self.death = True, None
        self.is_ = "is" if self.alive else "was"

    def year(self, age: int) -> int:
        return self.birth[0] + age

    def dates(self) -> str:
        if self.death is None:
            return f"born {self.birth[3]}"
        return f"{self.birth[3]} – {self.death[3]}"
