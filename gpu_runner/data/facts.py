"""Small fact tables shared by the tiny model's corpus and its fine-tuning task.

The corpus generator turns these rows into prose and prose dialogues for pretraining; the task
generator turns them into questions whose answers must come back in a fixed JSON shape. Keeping
both on one table means the tiny model has seen the facts in prose before it learns the format.
"""

from __future__ import annotations

from typing import NamedTuple


class Country(NamedTuple):
    name: str
    capital: str
    continent: str
    language: str


class Animal(NamedTuple):
    name: str
    plural: str
    legs: int
    home: str
    food: str
    sound: str


class Planet(NamedTuple):
    name: str
    order: int
    trait: str


class Element(NamedTuple):
    name: str
    symbol: str
    state: str


class Colored(NamedTuple):
    thing: str
    color: str


class Job(NamedTuple):
    name: str
    work: str
    tool: str


class Measure(NamedTuple):
    quantity: str
    unit: str
    instrument: str


class Explained(NamedTuple):
    """A hand-written question with a short answer and a longer prose answer."""

    question: str
    short: str
    prose: str
    confidence: str = "high"


COUNTRIES: list[Country] = [
    Country("France", "Paris", "Europe", "French"),
    Country("Germany", "Berlin", "Europe", "German"),
    Country("Italy", "Rome", "Europe", "Italian"),
    Country("Spain", "Madrid", "Europe", "Spanish"),
    Country("Portugal", "Lisbon", "Europe", "Portuguese"),
    Country("Greece", "Athens", "Europe", "Greek"),
    Country("Poland", "Warsaw", "Europe", "Polish"),
    Country("Sweden", "Stockholm", "Europe", "Swedish"),
    Country("Norway", "Oslo", "Europe", "Norwegian"),
    Country("Finland", "Helsinki", "Europe", "Finnish"),
    Country("Ireland", "Dublin", "Europe", "English"),
    Country("Austria", "Vienna", "Europe", "German"),
    Country("Hungary", "Budapest", "Europe", "Hungarian"),
    Country("the Netherlands", "Amsterdam", "Europe", "Dutch"),
    Country("Japan", "Tokyo", "Asia", "Japanese"),
    Country("China", "Beijing", "Asia", "Chinese"),
    Country("India", "New Delhi", "Asia", "Hindi"),
    Country("Thailand", "Bangkok", "Asia", "Thai"),
    Country("Vietnam", "Hanoi", "Asia", "Vietnamese"),
    Country("South Korea", "Seoul", "Asia", "Korean"),
    Country("Indonesia", "Jakarta", "Asia", "Indonesian"),
    Country("Turkey", "Ankara", "Asia", "Turkish"),
    Country("Egypt", "Cairo", "Africa", "Arabic"),
    Country("Kenya", "Nairobi", "Africa", "Swahili"),
    Country("Nigeria", "Abuja", "Africa", "English"),
    Country("Morocco", "Rabat", "Africa", "Arabic"),
    Country("Ghana", "Accra", "Africa", "English"),
    Country("Ethiopia", "Addis Ababa", "Africa", "Amharic"),
    Country("Canada", "Ottawa", "North America", "English"),
    Country("Mexico", "Mexico City", "North America", "Spanish"),
    Country("Cuba", "Havana", "North America", "Spanish"),
    Country("Brazil", "Brasilia", "South America", "Portuguese"),
    Country("Argentina", "Buenos Aires", "South America", "Spanish"),
    Country("Peru", "Lima", "South America", "Spanish"),
    Country("Chile", "Santiago", "South America", "Spanish"),
    Country("Colombia", "Bogota", "South America", "Spanish"),
    Country("Australia", "Canberra", "Oceania", "English"),
    Country("New Zealand", "Wellington", "Oceania", "English"),
]

ANIMALS: list[Animal] = [
    Animal("dog", "dogs", 4, "houses and farms", "meat and kibble", "barks"),
    Animal("cat", "cats", 4, "houses", "meat and fish", "meows"),
    Animal("cow", "cows", 4, "fields and farms", "grass", "moos"),
    Animal("horse", "horses", 4, "fields and stables", "grass and hay", "neighs"),
    Animal("sheep", "sheep", 4, "hills and farms", "grass", "bleats"),
    Animal("pig", "pigs", 4, "farms", "almost anything", "oinks"),
    Animal("duck", "ducks", 2, "ponds and rivers", "plants and insects", "quacks"),
    Animal("chicken", "chickens", 2, "farms", "seeds and insects", "clucks"),
    Animal("owl", "owls", 2, "forests", "mice and insects", "hoots"),
    Animal("crow", "crows", 2, "towns and fields", "seeds and scraps", "caws"),
    Animal("lion", "lions", 4, "grasslands", "meat", "roars"),
    Animal("wolf", "wolves", 4, "forests and mountains", "meat", "howls"),
    Animal("frog", "frogs", 4, "ponds and wet places", "insects", "croaks"),
    Animal("snake", "snakes", 0, "grass, rocks and deserts", "small animals", "hisses"),
    Animal("bee", "bees", 6, "hives", "nectar and pollen", "buzzes"),
    Animal("ant", "ants", 6, "nests in the ground", "seeds and sugar", "makes almost no sound"),
    Animal("spider", "spiders", 8, "webs in corners and gardens", "insects", "makes almost no sound"),
    Animal("octopus", "octopuses", 8, "the sea", "crabs and fish", "makes no sound"),
    Animal("crab", "crabs", 10, "beaches and the sea floor", "small sea creatures", "clicks"),
    Animal("elephant", "elephants", 4, "grasslands and forests", "leaves, grass and fruit", "trumpets"),
    Animal("monkey", "monkeys", 4, "forests", "fruit and leaves", "chatters"),
    Animal("rabbit", "rabbits", 4, "burrows in fields", "grass and vegetables", "thumps"),
    Animal("mouse", "mice", 4, "fields and houses", "seeds and grain", "squeaks"),
    Animal("penguin", "penguins", 2, "cold coasts", "fish", "squawks"),
    Animal("goat", "goats", 4, "hills and farms", "grass and shrubs", "bleats"),
    Animal("bear", "bears", 4, "forests and mountains", "berries, fish and roots", "growls"),
    Animal("deer", "deer", 4, "forests and meadows", "grass and leaves", "grunts"),
    Animal("eagle", "eagles", 2, "cliffs and mountains", "fish and small animals", "screeches"),
    Animal("whale", "whales", 0, "the ocean", "fish and krill", "sings"),
    Animal("butterfly", "butterflies", 6, "gardens and meadows", "nectar", "makes no sound"),
]

PLANETS: list[Planet] = [
    Planet("Mercury", 1, "the smallest planet and the closest to the Sun"),
    Planet("Venus", 2, "the hottest planet, covered in thick clouds"),
    Planet("Earth", 3, "the only planet known to have life"),
    Planet("Mars", 4, "a cold, dusty planet that looks red"),
    Planet("Jupiter", 5, "the largest planet, a giant ball of gas"),
    Planet("Saturn", 6, "a gas giant with bright rings of ice and rock"),
    Planet("Uranus", 7, "an ice giant that spins on its side"),
    Planet("Neptune", 8, "a cold, windy ice giant far from the Sun"),
]

ELEMENTS: list[Element] = [
    Element("hydrogen", "H", "a gas"),
    Element("helium", "He", "a gas"),
    Element("carbon", "C", "a solid"),
    Element("nitrogen", "N", "a gas"),
    Element("oxygen", "O", "a gas"),
    Element("sodium", "Na", "a solid"),
    Element("magnesium", "Mg", "a solid"),
    Element("aluminium", "Al", "a solid"),
    Element("silicon", "Si", "a solid"),
    Element("sulfur", "S", "a solid"),
    Element("chlorine", "Cl", "a gas"),
    Element("calcium", "Ca", "a solid"),
    Element("iron", "Fe", "a solid"),
    Element("copper", "Cu", "a solid"),
    Element("zinc", "Zn", "a solid"),
    Element("silver", "Ag", "a solid"),
    Element("gold", "Au", "a solid"),
    Element("mercury", "Hg", "a liquid"),
    Element("lead", "Pb", "a solid"),
    Element("neon", "Ne", "a gas"),
    Element("potassium", "K", "a solid"),
    Element("tin", "Sn", "a solid"),
]

COLORED: list[Colored] = [
    Colored("a ripe banana", "yellow"),
    Colored("grass", "green"),
    Colored("a clear daytime sky", "blue"),
    Colored("fresh snow", "white"),
    Colored("coal", "black"),
    Colored("a ripe tomato", "red"),
    Colored("a carrot", "orange"),
    Colored("a lemon", "yellow"),
    Colored("milk", "white"),
    Colored("a lime", "green"),
    Colored("an aubergine", "purple"),
    Colored("chocolate", "brown"),
    Colored("a fire engine", "red"),
    Colored("the sea on a sunny day", "blue"),
    Colored("a pumpkin", "orange"),
    Colored("charcoal", "black"),
    Colored("a polar bear's fur", "white"),
    Colored("a strawberry", "red"),
    Colored("a frog's skin", "green"),
    Colored("an old tree trunk", "brown"),
    Colored("a flamingo", "pink"),
    Colored("a lavender flower", "purple"),
    Colored("a school bus in North America", "yellow"),
    Colored("a blueberry", "dark blue"),
    Colored("ash from a fire", "grey"),
    Colored("a cloud before rain", "grey"),
    Colored("a raven", "black"),
    Colored("an egg yolk", "yellow"),
]

OPPOSITES: list[tuple[str, str]] = [
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("up", "down"),
    ("open", "closed"),
    ("light", "dark"),
    ("full", "empty"),
    ("early", "late"),
    ("happy", "sad"),
    ("old", "new"),
    ("wet", "dry"),
    ("hard", "soft"),
    ("loud", "quiet"),
    ("strong", "weak"),
    ("rich", "poor"),
    ("thick", "thin"),
    ("high", "low"),
    ("near", "far"),
    ("clean", "dirty"),
    ("easy", "difficult"),
    ("first", "last"),
    ("inside", "outside"),
    ("push", "pull"),
    ("buy", "sell"),
    ("win", "lose"),
    ("begin", "end"),
    ("heavy", "light"),
    ("sweet", "sour"),
    ("long", "short"),
    ("true", "false"),
    ("awake", "asleep"),
    ("cheap", "expensive"),
    ("deep", "shallow"),
    ("narrow", "wide"),
]

JOBS: list[Job] = [
    Job("baker", "makes bread and cakes", "an oven"),
    Job("doctor", "helps sick people get better", "a stethoscope"),
    Job("teacher", "helps students learn", "a whiteboard"),
    Job("farmer", "grows crops and raises animals", "a tractor"),
    Job("carpenter", "builds things out of wood", "a saw"),
    Job("pilot", "flies aircraft", "a control stick"),
    Job("chef", "cooks meals in a kitchen", "a sharp knife"),
    Job("plumber", "fixes pipes and taps", "a wrench"),
    Job("librarian", "looks after books and helps readers", "a catalogue"),
    Job("nurse", "cares for patients", "a thermometer"),
    Job("firefighter", "puts out fires and rescues people", "a hose"),
    Job("gardener", "looks after plants and lawns", "a spade"),
    Job("painter", "paints walls or pictures", "a brush"),
    Job("tailor", "makes and mends clothes", "a needle"),
    Job("mechanic", "repairs cars and engines", "a spanner"),
    Job("dentist", "looks after teeth", "a small mirror"),
    Job("programmer", "writes software", "a computer"),
    Job("photographer", "takes pictures", "a camera"),
    Job("fisher", "catches fish", "a net"),
    Job("electrician", "installs and repairs wiring", "a voltage tester"),
    Job("architect", "designs buildings", "a drawing board"),
    Job("postal worker", "delivers letters and parcels", "a delivery bag"),
    Job("potter", "shapes clay into bowls and pots", "a potter's wheel"),
    Job("astronomer", "studies stars and planets", "a telescope"),
]

MEASURES: list[Measure] = [
    Measure("length", "the metre", "a ruler or tape measure"),
    Measure("mass", "the kilogram", "a scale"),
    Measure("time", "the second", "a clock or stopwatch"),
    Measure("temperature", "the degree Celsius", "a thermometer"),
    Measure("electric current", "the ampere", "an ammeter"),
    Measure("volume", "the litre", "a measuring jug"),
    Measure("speed", "metres per second", "a speedometer"),
    Measure("air pressure", "the pascal", "a barometer"),
    Measure("energy", "the joule", "a calorimeter"),
    Measure("power", "the watt", "a power meter"),
    Measure("wind speed", "kilometres per hour", "an anemometer"),
    Measure("loudness", "the decibel", "a sound level meter"),
    Measure("angle", "the degree", "a protractor"),
    Measure("electric voltage", "the volt", "a voltmeter"),
]

NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]

ORDINALS = ["zeroth", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]

EXPLAINED: list[Explained] = [
    Explained(
        "Why is the sky blue?",
        "Air scatters blue sunlight the most",
        "Sunlight contains every colour. When it passes through the air, the short blue waves bounce "
        "off tiny gas molecules much more than the long red waves do, so blue light reaches our eyes "
        "from every part of the sky.",
    ),
    Explained(
        "Why do we have seasons?",
        "Earth's axis is tilted",
        "Earth leans to one side as it travels around the Sun. For part of the year one half of the "
        "planet leans toward the Sun and gets longer, warmer days, while the other half has winter.",
    ),
    Explained(
        "What makes a rainbow?",
        "Sunlight bending through raindrops",
        "A rainbow appears when sunlight enters raindrops, bends, reflects off the back of each drop and "
        "spreads out into its colours on the way out.",
    ),
    Explained(
        "Why does ice float on water?",
        "Ice is less dense than water",
        "When water freezes, its molecules lock into an open pattern that takes up more space. The ice is "
        "lighter than the same amount of liquid water, so it floats.",
    ),
    Explained(
        "How do plants make food?",
        "By photosynthesis",
        "Plants use the energy in sunlight to turn water and carbon dioxide into sugar. This process is "
        "called photosynthesis, and it releases oxygen into the air.",
    ),
    Explained(
        "What causes thunder?",
        "Lightning heating the air",
        "Lightning heats the air around it so quickly that the air expands with a bang. The sound that "
        "travels out from that sudden expansion is thunder.",
    ),
    Explained(
        "Why do we sleep?",
        "To rest and repair the body and brain",
        "Sleep gives the body time to repair itself and lets the brain sort through the day's memories. "
        "People who do not sleep enough find it hard to think clearly.",
    ),
    Explained(
        "What is gravity?",
        "The pull between masses",
        "Gravity is the pull that every object with mass has on every other object. It keeps us on the "
        "ground and keeps the Moon moving around the Earth.",
    ),
    Explained(
        "Why does the Moon change shape?",
        "We see different amounts of its sunlit side",
        "The Moon does not really change shape. As it travels around the Earth, we see different parts of "
        "the half that is lit by the Sun, so it seems to grow and shrink.",
    ),
    Explained(
        "What is an atom?",
        "The smallest unit of an element",
        "An atom is a tiny particle made of a nucleus with electrons around it. Everything you can touch "
        "is built from atoms joined together.",
    ),
    Explained(
        "How does a compass work?",
        "Its needle lines up with Earth's magnetic field",
        "A compass needle is a small magnet. The Earth acts like a huge, weak magnet, and the needle turns "
        "until it lines up with it, pointing roughly north.",
    ),
    Explained(
        "Why is the sea salty?",
        "Rivers carry dissolved minerals into it",
        "Rain slowly wears away rocks and rivers carry the dissolved salts to the sea. When sea water "
        "evaporates the salt stays behind, so over time the sea became salty.",
    ),
    Explained(
        "What is a volcano?",
        "An opening where melted rock escapes",
        "A volcano is a place where hot melted rock from deep inside the Earth pushes up to the surface. "
        "When it erupts it can throw out lava, ash and gas.",
    ),
    Explained(
        "How do bees make honey?",
        "From flower nectar they dry in the hive",
        "Bees collect sweet nectar from flowers and carry it back to the hive. They pass it between them "
        "and fan it with their wings until most of the water is gone and it turns into honey.",
    ),
    Explained(
        "What is the water cycle?",
        "Water evaporating, forming clouds and falling as rain",
        "The Sun warms water in seas and lakes so that it rises as vapour. The vapour cools into clouds, "
        "falls back as rain or snow, and flows through rivers to the sea again.",
    ),
    Explained(
        "Why do leaves change colour in autumn?",
        "Trees stop making green chlorophyll",
        "In autumn trees stop making the green substance that helps them catch sunlight. As the green fades, "
        "the yellow and orange colours that were hidden in the leaf can be seen.",
    ),
    Explained(
        "What is electricity?",
        "The flow of electric charge",
        "Electricity is the movement of tiny charged particles called electrons. When they flow through a "
        "wire they can light a lamp, turn a motor or heat a kettle.",
    ),
    Explained(
        "How does a fridge keep food cold?",
        "It pumps heat out of the inside",
        "A fridge moves a special fluid through pipes. The fluid takes heat from inside the fridge and "
        "gives it off through the coils at the back, so the inside stays cold.",
    ),
    Explained(
        "What is a computer program?",
        "A list of instructions for a computer",
        "A program is a set of instructions written in a language a computer can follow. The computer "
        "carries out the steps one after another, very quickly.",
    ),
    Explained(
        "What does a CPU do?",
        "It carries out a computer's instructions",
        "The central processing unit is the part of a computer that does the work. It reads instructions "
        "from memory and carries them out billions of times every second.",
    ),
    Explained(
        "What is the internet?",
        "A worldwide network of connected computers",
        "The internet links millions of computers so they can send messages to one another. Web pages, "
        "email and video calls all travel across it in small packets.",
    ),
    Explained(
        "Why do we need to drink water?",
        "The body uses water for almost everything",
        "Your body is mostly water. It needs water to carry food around, keep a steady temperature and get "
        "rid of waste, and it loses some every day, so you have to drink more.",
    ),
    Explained(
        "What is a fossil?",
        "The preserved remains of an ancient living thing",
        "A fossil forms when a plant or animal is buried in mud or sand that slowly turns to rock. Over a "
        "very long time its shape is kept in the stone.",
    ),
    Explained(
        "How do birds fly?",
        "Their wings push air down and create lift",
        "Bird wings are curved and light. As a bird flaps, its wings push air downward and backward, which "
        "lifts the bird up and moves it forward.",
    ),
    Explained(
        "What is a habit?",
        "Something you do regularly without much thought",
        "A habit is an action you repeat so often that it becomes almost automatic, like brushing your "
        "teeth before bed.",
    ),
    Explained(
        "Why does bread rise?",
        "Yeast makes gas bubbles in the dough",
        "Yeast is a tiny living thing that eats sugar in the dough and gives off carbon dioxide gas. The "
        "bubbles get trapped in the dough and make it puff up.",
    ),
    Explained(
        "What is an eclipse?",
        "One body blocking light from another",
        "An eclipse happens when the Moon passes between the Sun and the Earth, or when the Earth's shadow "
        "falls on the Moon, blocking some or all of the light.",
    ),
    Explained(
        "How does a bicycle stay upright?",
        "Steering and motion keep it balanced",
        "A moving bicycle stays up because the rider keeps steering slightly into any lean. The faster it "
        "goes, the easier it is to balance.",
    ),
    Explained(
        "What is a desert?",
        "A place that gets very little rain",
        "A desert is any region that receives very little rain during the year. Some deserts are hot and "
        "sandy, and others are cold and rocky.",
    ),
    Explained(
        "What is the best way to learn a language?",
        "Practise a little every day",
        "Most people learn a language best by using it often: listening, speaking and reading a little "
        "every day, and not being afraid to make mistakes.",
        "medium",
    ),
    Explained(
        "How long should a nap be?",
        "About twenty minutes",
        "A short nap of around twenty minutes helps many people feel more alert without feeling groggy "
        "afterwards, though it depends on the person.",
        "medium",
    ),
    Explained(
        "Is it going to rain tomorrow?",
        "I cannot know without a forecast",
        "I do not have a weather forecast, so I cannot say. A local weather service will tell you the "
        "chance of rain for tomorrow.",
        "low",
    ),
    Explained(
        "What is the most popular pet?",
        "Probably the dog",
        "Dogs and cats are the most common pets in many countries. Which one is more popular depends on "
        "the place and the survey.",
        "medium",
    ),
    Explained(
        "How many people live in a big city?",
        "Often several million",
        "A large city can be home to a few million people, and the biggest have well over ten million. "
        "It varies a lot from city to city.",
        "low",
    ),
    Explained(
        "What should I cook for dinner?",
        "A simple vegetable pasta",
        "A quick and easy choice is pasta with vegetables and a little cheese. It takes about twenty "
        "minutes and uses things many kitchens already have.",
        "low",
    ),
    Explained(
        "How far can a person walk in a day?",
        "About thirty kilometres",
        "A healthy adult walking at an easy pace for most of the day can cover around thirty kilometres, "
        "though trained walkers can go much further.",
        "medium",
    ),
    Explained(
        "Why do cats purr?",
        "Mostly to show contentment",
        "Cats often purr when they are relaxed and happy, but they also purr to calm themselves when they "
        "are hurt or nervous.",
        "medium",
    ),
    Explained(
        "What is a good first programming language?",
        "Python is a common choice",
        "Many beginners start with Python because its code is short and easy to read, but any language "
        "you enjoy using is a fine place to start.",
        "medium",
    ),
    Explained(
        "How do I stay focused while studying?",
        "Work in short blocks with breaks",
        "Put your phone away, study in blocks of about half an hour and take a short break after each one. "
        "Having a clear goal for each block helps too.",
        "medium",
    ),
    Explained(
        "Which season is the best?",
        "That depends on personal taste",
        "There is no single best season. Some people love warm summer days, and others prefer crisp autumn "
        "air or snowy winters.",
        "low",
    ),
    Explained(
        "What is a noun?",
        "A word that names a person, place or thing",
        "A noun is a naming word, such as teacher, city or apple. Most sentences have at least one noun.",
    ),
    Explained(
        "What is a verb?",
        "A word for an action or state",
        "A verb tells you what someone or something does or is, such as run, think or be.",
    ),
    Explained(
        "What is a triangle?",
        "A shape with three sides",
        "A triangle is a flat shape with three straight sides and three corners. Its angles always add up "
        "to one hundred and eighty degrees.",
    ),
    Explained(
        "What is a square?",
        "A shape with four equal sides and right angles",
        "A square is a flat shape with four sides of the same length and four right angles at its corners.",
    ),
    Explained(
        "What is an island?",
        "Land surrounded by water",
        "An island is a piece of land that has water all around it. Some are tiny and others are home to "
        "whole countries.",
    ),
    Explained(
        "What is a glacier?",
        "A slow river of ice",
        "A glacier is a huge mass of ice that forms from snow packed down over many years. It moves very "
        "slowly downhill under its own weight.",
    ),
    Explained(
        "Why do onions make people cry?",
        "They release a gas that irritates the eyes",
        "Cutting an onion breaks its cells and releases a chemical that turns into a gas. When the gas "
        "reaches your eyes it stings, and your eyes make tears to wash it away.",
    ),
    Explained(
        "What is a calendar?",
        "A system for organising days into weeks, months and years",
        "A calendar divides time into days, weeks, months and years so that people can plan and keep track "
        "of dates.",
    ),
]
