"""Writes benches/data/mixed_lengths.jsonl: 120 benign prompts whose lengths
and answer lengths spread widely (short questions with short answers, short
requests with long answers, long passages to summarize), for the ONNX
decoding benchmark's whole-run test. Original text; deterministic."""
import json
import random
from pathlib import Path

short_q = [
    "What is the capital of France?", "How many legs does a spider have?",
    "What is 17 plus 25?", "Which planet is closest to the sun?",
    "What color do you get by mixing blue and yellow?", "How many days are in a leap year?",
    "What is the boiling point of water in Celsius at sea level?", "Who wrote Romeo and Juliet?",
    "What is the largest ocean on Earth?", "How many minutes are in two hours?",
    "What gas do plants absorb from the air?", "What is the square root of 81?",
    "In which continent is Kenya?", "What is the opposite of 'ancient'?",
    "How many sides does a hexagon have?", "What is the chemical symbol for gold?",
    "Translate 'thank you' into Spanish.", "What is the freezing point of water in Fahrenheit?",
    "Name the currency of Japan.", "What is 9 times 7?",
    "Which animal is known as the king of the jungle?", "What is the tallest mountain in the world?",
    "How many continents are there?", "What language is spoken in Brazil?",
    "Answer yes or no: is a tomato a fruit?", "What is the plural of 'mouse'?",
    "Which month has 28 days in a common year?", "What is the main ingredient of guacamole?",
    "How many strings does a standard violin have?", "What is the capital of Canada?",
    "Reply with one word: what do bees make?", "What shape is a stop sign?",
    "How many hours are in a day?", "What is H2O commonly called?",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?", "What is 100 divided by 4?",
    "Name a primary color.", "What is the fastest land animal?",
    "How many weeks are in a year?", "Which organ pumps blood through the body?",
]
long_requests = [
    "Write a detailed, step-by-step guide to planting a vegetable garden in spring, covering soil, seeds, watering and pests.",
    "Explain in depth how a bicycle's gears work and when a rider should change them.",
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Describe the water cycle in detail, from evaporation to precipitation and back.",
    "Give a thorough explanation of how to prepare for a job interview.",
    "Write an essay on why reading fiction is valuable for adults.",
    "Explain how a refrigerator keeps food cold, with as much detail as you can.",
    "Write a detailed packing list and plan for a week-long hiking trip, with reasons for each item.",
    "Describe, step by step, how to bake a loaf of sourdough bread from a starter.",
    "Explain the rules of chess to a complete beginner, piece by piece.",
    "Write a long letter from a grandmother to her grandchild who is starting university.",
    "Describe how the seasons happen on Earth and why they differ between hemispheres.",
    "Give detailed advice for someone learning to play the guitar on their own.",
    "Explain how to budget a monthly salary, with categories and an example.",
    "Write a detailed review of an imaginary restaurant, covering food, service and atmosphere.",
    "Explain in detail how vaccines train the immune system.",
    "Describe a full day in the life of a medieval baker.",
    "Write a thorough comparison of trains and planes for travelling 500 kilometres.",
    "Explain how to care for a houseplant that is losing its leaves, covering every likely cause.",
    "Write a long, descriptive poem about the sea in winter.",
    "Explain how compound interest works, with a worked example over ten years.",
    "Give a detailed guide to writing a clear email to a colleague you have never met.",
    "Describe how bees communicate and organize work inside a hive.",
    "Write a detailed plan for teaching a child to ride a bicycle.",
    "Explain how the internet delivers a web page from a server to a browser, step by step.",
    "Write a story about two friends who get lost in a forest and find their way home.",
    "Describe in detail how to paint a room, from preparing the walls to cleaning the brushes.",
    "Explain how tides are caused and why there are usually two a day.",
    "Write an in-depth guide to making a good cup of tea.",
    "Describe the life cycle of a butterfly in detail.",
    "Explain how to train a puppy to sit, stay and come, with tips for each.",
    "Write a long speech for a school graduation ceremony.",
    "Describe how a city could reduce traffic jams, with several detailed ideas.",
    "Explain how a camera captures a photograph, from lens to sensor.",
    "Write a detailed guide to organizing a small community picnic.",
    "Explain why the sky is blue and why sunsets are red, in detail.",
    "Describe how to start running as a beginner without getting injured.",
    "Write a detailed description of an imaginary island, its people and its customs.",
    "Explain how recycling plastic works and what happens to each type.",
    "Write a long fairy tale about a clever fox and a proud crow.",
]
passages = [
    ("The town of Elmbrook sits where two small rivers meet. For most of its history it was a market "
     "town: farmers from the surrounding hills brought wool, cheese and apples to sell on Thursdays, and "
     "the square filled with carts before dawn. In the last century a railway line arrived, then a paper "
     "mill, and the population doubled within twenty years. The mill closed in the nineteen-eighties, and "
     "for a while the town seemed to shrink: shops stood empty and young people left for the cities. "
     "Recently, things have changed again. The old mill has become workshops for carpenters, potters and "
     "a small bakery, the Thursday market has returned, and the river path now draws walkers and cyclists "
     "every weekend. Residents argue about parking and new houses, but most agree the town feels alive."),
    ("Keeping bees in a city garden is easier than many people think. A single hive needs little space: "
     "a quiet corner with morning sun, shelter from strong wind, and a source of water nearby. Bees fly "
     "up to three kilometres to forage, so the flowers in parks, street trees and balconies all feed "
     "them. The beekeeper's work follows the seasons. In spring the colony grows fast and must be checked "
     "every week for signs that it wants to swarm. In summer honey is stored and can be harvested once "
     "the cells are capped with wax. In autumn the bees need enough stores to survive the winter, and the "
     "hive is protected against mice and damp. Neighbours are usually won over by a jar of honey."),
    ("The library's new lending scheme lets members borrow tools as well as books. The idea came from a "
     "survey in which many residents said they owned a drill they had used only once. The collection now "
     "includes ladders, sewing machines, pressure washers, camping stoves and a tile cutter. Each item is "
     "checked when it comes back, and volunteers run a repair session on the first Saturday of every "
     "month. Loans last one week and cost nothing, although a small deposit is asked for the most "
     "expensive items. In its first year the scheme made more than four thousand loans, and the "
     "librarians say it has brought in people who had not visited the building in years."),
    ("A good night's sleep depends on habits more than on luck. Going to bed and getting up at the same "
     "time every day, even at weekends, keeps the body's internal clock steady. Bright light in the "
     "morning helps set that clock, while screens and strong light late in the evening delay it. Caffeine "
     "can stay in the body for many hours, so an afternoon coffee may still be working at midnight. The "
     "bedroom itself matters too: cool, dark and quiet rooms make it easier to fall asleep and stay "
     "asleep. People who lie awake for a long time are often advised to get up, do something calm in dim "
     "light, and return to bed only when they feel sleepy."),
    ("When the school decided to plant an orchard on its unused playing field, the pupils did most of "
     "the work. They measured the field, chose twelve varieties of apple and pear that suit the local "
     "climate, and raised money by selling seedlings grown in the classroom. Planting day took place in "
     "November, when the young trees were dormant. Each class adopted a row and is responsible for "
     "watering it during dry spells and keeping the grass away from the trunks. The first small harvest "
     "came three years later and was pressed into juice for the school fair. Teachers now use the orchard "
     "for lessons in biology, mathematics and art."),
    ("Walking the coastal path from the harbour to the old fort takes about three hours. The route "
     "begins on a wide promenade, then climbs steeply onto the cliffs, where the path is narrow and can "
     "be muddy after rain. Halfway along, a wooden bench marks a viewpoint over a bay where seals are "
     "often seen resting on the rocks. The second half is gentler and passes a small café that opens "
     "only in summer. The fort itself was built to guard the harbour entrance and now houses a modest "
     "museum about the lives of the soldiers stationed there. Walkers can return by bus, which runs every "
     "hour from the car park below the fort."),
]
tasks = [
    "Summarize the passage above in one sentence.",
    "Give the passage above a short title.",
    "List the three most important facts in the passage above.",
    "Rewrite the passage above for a ten-year-old reader.",
    "What question would you ask the author of the passage above? Give one.",
    "Explain in detail what the passage above says and what we can learn from it.",
    "Answer with one word: is the passage above mostly positive or negative?",
]
rows = []
for i, q in enumerate(short_q):
    rows.append(("short", q))
for i, q in enumerate(long_requests):
    rows.append(("long_answer", q))
k = 0
for p in passages:
    for t in tasks:
        if k < 40:
            rows.append(("passage", p + "\n\n" + t))
        k += 1
# Interleave the kinds so that file-order batches mix lengths, as real
# benchmarks do (a fixed shuffle).
random.Random(7).shuffle(rows)
out = Path(__file__).resolve().parent / "data" / "mixed_lengths.jsonl"
with out.open("w", encoding="utf-8") as f:
    for n, (kind, prompt) in enumerate(rows, 1):
        f.write(json.dumps({"id": f"{kind}-{n:03d}", "category": kind, "prompt": prompt, "benign": True}) + "\n")
print(f"{len(rows)} prompts -> {out}")
