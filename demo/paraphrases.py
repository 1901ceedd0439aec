"""A hand-labelled set of caption/QA text pairs for measuring semantic text dedup: paraphrases (the same
content, reworded: a dedup stage should drop one) and different-meaning pairs, many of them lexically close
(swapped roles, another colour or number, a negation: a dedup stage must keep both).

    PAIRS: list[tuple[str, str, bool]]   (text_a, text_b, same_meaning)

Written by hand for vlmloom (not taken from a published set); `bench/semantic_dedup.py` prints precision and
recall of a backend over it at several cosine thresholds.
"""
from __future__ import annotations

PARAPHRASES = [
    ("A dog runs along the beach.", "A dog is running on the sand by the sea."),
    ("Two children play football in a park.", "A pair of kids are playing soccer in the park."),
    ("A red car parked in front of a brick house.", "In front of a brick house there is a parked red car."),
    ("A man is slicing tomatoes in the kitchen.", "In a kitchen, a man cuts tomatoes into slices."),
    ("A bowl of fresh fruit on a wooden table.", "Fresh fruit in a bowl sitting on a wooden table."),
    ("The sun sets over the mountains.", "Sunset behind the mountain range."),
    ("A woman rides a bicycle down a city street.", "A woman cycling along a street in the city."),
    ("A cat sleeping on a windowsill.", "A cat asleep on the window ledge."),
    ("An airplane flying above the clouds.", "A plane in flight over the clouds."),
    ("A group of people hiking up a snowy trail.", "Several hikers climbing a trail covered in snow."),
    ("A plate of spaghetti with tomato sauce.", "Spaghetti served with tomato sauce on a plate."),
    ("A boy reading a book under a tree.", "Under a tree, a young boy is reading a book."),
    ("A yellow school bus on a rural road.", "A school bus, yellow, driving on a country road."),
    ("Close-up of a bee on a purple flower.", "A bee sitting on a purple flower, seen up close."),
    ("A chef preparing sushi at a counter.", "At the counter, a chef makes sushi."),
    ("A lighthouse on a rocky coast at dawn.", "At dawn, a lighthouse stands on the rocky shore."),
    ("Two horses grazing in a green field.", "A pair of horses eating grass in a green meadow."),
    ("A laptop and a cup of coffee on a desk.", "On the desk there is a laptop next to a coffee cup."),
    ("A crowded train station during rush hour.", "A train station full of people at rush hour."),
    ("A little girl blowing out birthday candles.", "A young girl blows out the candles on her birthday cake."),
    ("Snow covers the roofs of the village.", "The village rooftops are covered with snow."),
    ("A fisherman casting a net from a small boat.", "From a small boat, a fisherman throws his net."),
    ("A skateboarder doing a trick on a ramp.", "On a ramp, a skateboarder performs a trick."),
    ("What is the capital of France?", "Which city is the capital of France?"),
    ("How many apples are on the table?", "What is the number of apples on the table?"),
    ("What color is the umbrella the woman is holding?", "Which colour is the woman's umbrella?"),
    ("Is there a clock on the wall?", "Does the wall have a clock on it?"),
    ("What is the man in the blue shirt doing?", "What is the man wearing the blue shirt doing?"),
    ("Solve for x: 2x + 3 = 11.", "Find x if 2x + 3 = 11."),
    ("What is the area of a circle with radius 3?", "Compute the area of a circle whose radius is 3."),
    ("A bar chart of monthly sales in 2023.", "Bar chart showing sales per month for 2023."),
    ("A scanned page of a physics textbook.", "A scan of a page from a physics textbook."),
    ("A screenshot of a login form with two fields.", "Screenshot of a sign-in form that has two input fields."),
    ("Fireworks light up the night sky over the river.", "Over the river, fireworks illuminate the night sky."),
    ("An old man feeding pigeons in a square.", "In a square, an elderly man feeds the pigeons."),
    ("A tall glass of orange juice.", "Orange juice in a tall glass."),
]

DIFFERENT = [
    ("A dog chasing a cat across the yard.", "A cat chasing a dog across the yard."),
    ("A red car parked in front of a brick house.", "A blue car parked in front of a brick house."),
    ("Two children play football in a park.", "Two children play basketball in a park."),
    ("A man is slicing tomatoes in the kitchen.", "A woman is washing dishes in the kitchen."),
    ("The sun rises over the mountains.", "The moon rises over the sea."),
    ("How many apples are on the table?", "How many oranges are on the table?"),
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("Is there a clock on the wall?", "Is there a painting on the wall?"),
    ("Solve for x: 2x + 3 = 11.", "Solve for x: 3x + 2 = 11."),
    ("What is the area of a circle with radius 3?", "What is the circumference of a circle with radius 3?"),
    ("A bar chart of monthly sales in 2023.", "A pie chart of market share in 2021."),
    ("A cat sleeping on a windowsill.", "A cat jumping off a windowsill."),
    ("An airplane flying above the clouds.", "An airplane parked at the gate."),
    ("A boy reading a book under a tree.", "A boy climbing a tree."),
    ("A plate of spaghetti with tomato sauce.", "A plate of rice with curry."),
    ("A woman rides a bicycle down a city street.", "A woman walks a dog down a city street."),
    ("A yellow school bus on a rural road.", "A red fire truck on a city road."),
    ("A bee on a purple flower.", "A butterfly on a yellow flower."),
    ("Two horses grazing in a green field.", "Three cows lying in a muddy field."),
    ("A laptop and a cup of coffee on a desk.", "A laptop and a stack of books on a bed."),
    ("A crowded train station during rush hour.", "An empty train station at night."),
    ("A little girl blowing out birthday candles.", "A little girl opening a birthday present."),
    ("Snow covers the roofs of the village.", "Rain floods the streets of the village."),
    ("A fisherman casting a net from a small boat.", "A sailor repairing the sail of a large ship."),
    ("A skateboarder doing a trick on a ramp.", "A surfer riding a big wave."),
    ("What color is the umbrella the woman is holding?", "What color is the hat the man is wearing?"),
    ("What is the man in the blue shirt doing?", "Where is the man in the blue shirt standing?"),
    ("A scanned page of a physics textbook.", "A scanned page of a cookbook."),
    ("A screenshot of a login form with two fields.", "A screenshot of a settings menu with ten options."),
    ("Fireworks light up the night sky over the river.", "Lightning strikes over the river at night."),
    ("The door is open.", "The door is not open."),
    ("There are two people in the photo.", "There are five people in the photo."),
    ("A chef preparing sushi at a counter.", "A chef preparing pizza in a wood oven."),
    ("A lighthouse on a rocky coast at dawn.", "A castle on a hill at dusk."),
    ("An old man feeding pigeons in a square.", "A young woman feeding ducks at a pond."),
    ("A tall glass of orange juice.", "A short glass of red wine."),
]

PAIRS: list[tuple[str, str, bool]] = ([(a, b, True) for a, b in PARAPHRASES]
                                      + [(a, b, False) for a, b in DIFFERENT])
