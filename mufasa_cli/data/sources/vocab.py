"""Topic vocabularies for the synthetic generator's human-readable titles.

Each topic: (name, six sub-topic phrases, four nouns). Titles are built from a genre template,
a sub-topic phrase and a noun, so that a person reading a table or `--explain` output can tell
what an item is about, and so that items of one sub-topic share words across genres.
"""

TOPICS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "basketball",
        ("NBA finals", "streetball", "three-point shooting", "college hoops", "slam dunk", "point guard"),
        ("highlights", "game", "play", "recap"),
    ),
    (
        "cooking",
        ("spicy noodles", "home baking", "street food", "dumplings", "vegan bowls", "barbecue"),
        ("recipe", "dish", "kitchen", "meal"),
    ),
    (
        "travel",
        ("mountain hiking", "island hopping", "city walks", "road trips", "night markets", "train journeys"),
        ("trip", "guide", "journey", "views"),
    ),
    (
        "finance",
        ("stock market", "personal budgeting", "crypto coins", "real estate", "index funds", "interest rates"),
        ("outlook", "tips", "analysis", "report"),
    ),
    (
        "gaming",
        ("King of Glory", "speedruns", "indie games", "esports league", "retro consoles", "open-world RPG"),
        ("gameplay", "match", "build", "stream"),
    ),
    (
        "music",
        ("piano covers", "hip hop", "guitar solos", "K-pop dance", "classical concerts", "lo-fi beats"),
        ("performance", "track", "session", "song"),
    ),
    (
        "fitness",
        ("home workouts", "marathon running", "yoga flow", "weight lifting", "cycling", "stretching"),
        ("routine", "challenge", "plan", "session"),
    ),
    (
        "pets",
        ("funny cats", "puppy training", "parrots", "aquarium fish", "rescue dogs", "hamsters"),
        ("moments", "care", "story", "clip"),
    ),
    (
        "technology",
        ("smartphones", "AI assistants", "laptops", "electric cars", "smart home", "chip design"),
        ("review", "launch", "test", "news"),
    ),
    (
        "anime",
        ("Ultraman", "Naruto", "One Piece", "Studio Ghibli", "mecha battles", "cosplay"),
        ("episode", "fan art", "scene", "theory"),
    ),
    (
        "fashion",
        ("street style", "sneakers", "vintage outfits", "makeup looks", "luxury bags", "summer dresses"),
        ("lookbook", "haul", "trend", "styling"),
    ),
    (
        "science",
        ("space telescopes", "black holes", "gene editing", "climate models", "volcanoes", "quantum physics"),
        ("discovery", "explainer", "study", "facts"),
    ),
    (
        "movies",
        ("Marvel heroes", "horror films", "romantic comedies", "Oscar picks", "kung fu classics", "animated features"),
        ("trailer", "review", "scene", "ending"),
    ),
    (
        "football",
        ("Premier League", "World Cup", "free kicks", "goalkeeping", "transfer rumours", "youth academy"),
        ("goals", "match", "tactics", "recap"),
    ),
    (
        "comedy",
        ("stand-up sets", "prank videos", "sketch shows", "office humor", "parody songs", "family jokes"),
        ("bit", "skit", "laughs", "moment"),
    ),
    (
        "parenting",
        ("newborn care", "toddler meals", "school homework", "bedtime stories", "family trips", "teen talks"),
        ("advice", "routine", "story", "tips"),
    ),
    (
        "cars",
        ("supercars", "drift racing", "car repair", "off-road trucks", "classic cars", "EV charging"),
        ("drive", "build", "test", "tour"),
    ),
    (
        "history",
        ("ancient Rome", "Tang dynasty", "world war", "samurai", "Egyptian pharaohs", "Silk Road"),
        ("documentary", "story", "facts", "lecture"),
    ),
    (
        "art",
        ("oil painting", "calligraphy", "pottery", "street murals", "digital drawing", "sculpture"),
        ("tutorial", "process", "exhibit", "piece"),
    ),
    (
        "gardening",
        ("succulents", "vegetable beds", "bonsai", "rose pruning", "balcony plants", "composting"),
        ("guide", "harvest", "tips", "tour"),
    ),
    (
        "beauty",
        ("skincare", "nail art", "hair styling", "perfume", "eyeliner", "sunscreen"),
        ("routine", "review", "tutorial", "haul"),
    ),
    (
        "education",
        ("math tricks", "English grammar", "exam prep", "coding basics", "history lessons", "chemistry labs"),
        ("lesson", "lecture", "notes", "quiz"),
    ),
    (
        "dance",
        ("street dance", "ballet", "Latin dance", "square dance", "shuffle", "tap dance"),
        ("choreography", "performance", "battle", "routine"),
    ),
    (
        "food review",
        ("hot pot", "bubble tea", "fried chicken", "sushi bars", "night snacks", "dessert shops"),
        ("taste test", "review", "ranking", "visit"),
    ),
    (
        "photography",
        ("night photos", "portrait lighting", "drone shots", "film cameras", "street photos", "wildlife lenses"),
        ("shots", "gear", "tips", "edit"),
    ),
    (
        "crafts",
        ("knitting", "origami", "woodworking", "candle making", "embroidery", "paper cutting"),
        ("project", "tutorial", "pattern", "build"),
    ),
    (
        "weather",
        ("typhoon season", "heat waves", "snow storms", "spring rain", "air quality", "sunsets"),
        ("forecast", "alert", "update", "footage"),
    ),
    (
        "health",
        ("sleep habits", "healthy eating", "back pain", "mental health", "vitamins", "eye care"),
        ("advice", "facts", "checklist", "story"),
    ),
    (
        "esports",
        ("League of Legends", "Valorant", "Dota", "PUBG", "fighting games", "Counter-Strike"),
        ("finals", "clutch", "draft", "highlights"),
    ),
    (
        "outdoors",
        ("camping", "fishing", "rock climbing", "kayaking", "bird watching", "stargazing"),
        ("trip", "gear", "spot", "day"),
    ),
    (
        "real life",
        ("campus life", "office days", "city rent", "night shifts", "village life", "first jobs"),
        ("vlog", "story", "diary", "day"),
    ),
    (
        "animals",
        ("pandas", "elephants", "sharks", "wolves", "penguins", "owls"),
        ("footage", "facts", "moments", "documentary"),
    ),
)

ADJECTIVES = ("amazing", "quick", "honest", "epic", "simple", "classic", "wild", "calm", "fresh", "rare")

DETAILS = (
    "tonight",
    "this week",
    "in Shanghai",
    "in Chengdu",
    "with friends",
    "part 2",
    "part 3",
    "2024 edition",
    "for beginners",
    "from the archive",
    "after work",
    "on a budget",
    "at dawn",
    "behind the scenes",
    "one year later",
    "the full story",
    "in the rain",
    "at home",
    "live",
    "uncut",
    "day 1",
    "day 7",
    "in slow motion",
    "by a pro",
    "finally",
    "again",
    "for the family",
    "the sequel",
    "round two",
    "at midnight",
)

GENRE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "post": (
        "My take on {adj} {sub} {noun} {detail}",
        "{adj} {sub} {noun} thoughts {detail}",
        "Sharing my {adj} {sub} {noun} notes {detail}",
    ),
    "news": (
        "{sub} {noun} {detail}: what we know",
        "Report: {adj} {sub} {noun} {detail}",
        "{adj} {sub} {noun} update {detail}",
    ),
    "micro_video": (
        "{adj} {sub} {noun} {detail} in 60 seconds",
        "Watch: {sub} {noun} {detail}, {adj} moment",
        "{adj} {sub} {noun} clip {detail}",
    ),
}

# Vague titles: shared by many items (or too short), so the quality rule flags them.
# The first ones are too short; the rest are shared by at least MAX_TITLE_SHARED items each.
VAGUE_TITLES = ("wow", "Must see", "You won't believe this", "Watch till the end", "Daily update for you")
