"""Charts and OCR documents/receipts, rendered with line boxes.

Part of the demo corpus (`vlmloom.demo.corpus`); every output is a function of the seeded `random.Random` passed in.
"""
from __future__ import annotations

import random
from typing import Any

from PIL import Image, ImageDraw

from vlmloom.demo.common import DemoRecord, load_font, text_box
from vlmloom.demo.scenes import COLOURS, backdrop, jitter

CHART_METRICS = ("sales", "visitors", "rainfall in mm", "revenue in thousands", "downloads", "orders", "temperature")
CITIES = ("Oslo", "Lisbon", "Denver", "Osaka", "Nairobi", "Lima", "Perth", "Quebec", "Tallinn", "Porto",
          "Austin", "Bergen", "Kyoto", "Seville", "Dublin", "Leeds")
CHART_LABELS = (("Q1", "Q2", "Q3", "Q4"), ("Jan", "Feb", "Mar", "Apr", "May", "Jun"),
                ("2019", "2020", "2021", "2022", "2023", "2024"), ("Mon", "Tue", "Wed", "Thu", "Fri"),
                ("North", "South", "East", "West"))


def render_chart(rng: random.Random) -> tuple[Image.Image, dict[str, Any]]:
    kind = rng.choice(("bar", "bar", "line"))
    labels = list(rng.choice(CHART_LABELS))
    labels = labels[: rng.randint(3, len(labels))]
    values = [rng.randint(3, 95) for _ in labels]
    metric = rng.choice(CHART_METRICS)
    w, h = rng.randint(420, 640), rng.randint(300, 460)
    tint = rng.choice(((236, 236, 230), (225, 235, 245), (240, 228, 220), (228, 242, 228), (240, 235, 210), (235, 225, 240)))
    image = backdrop(w, h, jitter(tint, rng, 12), rng, strength=1.0)
    draw = ImageDraw.Draw(image)
    where = f"{rng.choice(CITIES)} {rng.randint(2015, 2024)}"
    title = f"{metric.capitalize()}, {where}"
    draw.text((20, 12), title, fill=(20, 20, 20), font=load_font(20, bold=True))
    left, right, top, bottom = 50, w - 20, 50, h - 40
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=(40, 40, 40), width=2)
    slot = (right - left) / len(labels)
    colour = rng.choice(sorted(COLOURS.items()))[1] if kind == "line" else None
    points = []
    for i, (label, value) in enumerate(zip(labels, values)):
        cx = left + slot * (i + 0.5)
        y = bottom - (bottom - top) * value / 100
        if kind == "bar":
            fill = rng.choice([c for n, c in sorted(COLOURS.items()) if n not in ("white",)])
            draw.rectangle([cx - slot * 0.3, y, cx + slot * 0.3, bottom], fill=fill)
        points.append((cx, y))
        draw.text((cx, y - (4 if kind == "bar" else 10)), str(value), fill=(20, 20, 20), font=load_font(16), anchor="mb")
        draw.text((cx, bottom + 6), label, fill=(20, 20, 20), font=load_font(16), anchor="mt")
    if kind == "line":
        draw.line(points, fill=colour, width=3)
        for px, py in points:
            draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=colour)
    chart = {"type": kind, "title": title, "metric": metric, "where": where, "labels": labels, "values": values}
    return image, chart


def chart_record(rng: random.Random) -> tuple[DemoRecord, Image.Image]:
    image, chart = render_chart(rng)
    pairs = ", ".join(f"{label} {value}" for label, value in zip(chart["labels"], chart["values"]))
    caption = f"{chart['type'].capitalize()} chart of {chart['metric']} in {chart['where']}: {pairs}."
    return DemoRecord("caption", caption.encode("utf-8"), {"chart": chart}, [("png", image)], lang="en"), image




SHOPS = ("Green Leaf Market", "Corner Bakery", "Harbor Hardware", "Sunrise Pharmacy", "City Books", "Maple Coffee House",
         "Northside Grocery", "Blue River Deli")
STREETS = ("Oak Street", "Main Road", "Station Square", "Hill Avenue", "Park Lane", "River Walk", "Church Street")
ITEMS = ("Apples", "Bread", "Milk", "Coffee beans", "Orange juice", "Eggs", "Butter", "Cheese", "Tomatoes", "Rice",
         "Pasta", "Olive oil", "Bananas", "Yogurt", "Chocolate", "Tea", "Notebook", "Batteries", "Light bulb", "Soap")
WORDS = ("the", "meeting", "will", "take", "place", "on", "next", "Monday", "in", "main", "hall", "please", "bring",
         "your", "report", "and", "a", "copy", "of", "budget", "all", "staff", "are", "invited", "to", "join", "us",
         "for", "lunch", "after", "presentation", "new", "office", "hours", "start", "from", "first", "week", "June",
         "library", "closed", "during", "holidays", "thank", "you", "patience", "visitors", "should", "sign", "at",
         "front", "desk", "project", "deadline", "has", "been", "moved", "Friday", "questions", "can", "be", "sent",
         "team", "garden", "open", "every", "morning", "until", "noon", "parking", "is", "available", "behind", "building")


def ocr_record(rng: random.Random) -> tuple[DemoRecord, Image.Image]:
    size = rng.randint(26, 32)
    font = load_font(size)
    line_height = int(size * rng.uniform(1.7, 2.1))
    margin = rng.randint(36, 70)
    if rng.random() < 0.5:  # receipt
        w = rng.randint(600, 760)
        items = rng.sample(ITEMS, rng.randint(3, 7))
        prices = [rng.randint(50, 1500) / 100 for _ in items]
        lines = [rng.choice(SHOPS), f"{rng.randint(1, 199)} {rng.choice(STREETS)}",
                 f"Date: 2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} Time: {rng.randint(8, 20):02d}:{rng.randint(0, 59):02d}"]
        lines += [f"{item} {price:.2f}" for item, price in zip(items, prices)]
        lines += [f"Total {sum(prices):.2f}", rng.choice(("Thank you for shopping with us", "Please keep this receipt", "Have a nice day"))]
        doc = "receipt"
    else:  # notice / letter
        w = rng.randint(760, 1000)
        lines = [rng.choice(("Notice to all staff", "Weekly update", "Library announcement", "Office memo", "Team news"))]
        max_width = w - 2 * margin
        for _ in range(rng.randint(4, 8)):
            words: list[str] = []
            target = rng.randint(4, 9)
            while len(words) < target:
                candidate = words + [rng.choice(WORDS)]
                if font.getlength(" ".join(candidate)) > max_width:
                    break
                words = candidate
            lines.append(" ".join(words).capitalize())
        doc = "notice"
    h = 2 * margin + line_height * len(lines)
    # The white page lies on a shaded desk at a random offset: the desk keeps documents apart for pHash
    # while the text itself stays black on white.
    desk = jitter(rng.choice(((120, 85, 55), (70, 80, 100), (150, 160, 150), (190, 175, 150), (60, 60, 60), (170, 120, 120))), rng, 25)
    ox, oy = rng.randint(10, 360), rng.randint(10, 300)
    image = backdrop(w + ox + rng.randint(10, 360), h + oy + rng.randint(10, 300), desk, rng)
    draw = ImageDraw.Draw(image)
    image.paste(backdrop(w, h, (248, 248, 245), rng, strength=0.5), (ox, oy))  # unevenly lit paper
    logo = rng.randint(24, margin - 8)  # above the first line, so it never touches text
    draw.rectangle([ox + w - margin // 2 - logo * 2, oy + 4, ox + w - margin // 2, oy + 4 + logo], fill=jitter(rng.choice(sorted(COLOURS.values())), rng, 20))
    boxes = []
    for i, text in enumerate(lines):
        x, y = ox + margin, oy + margin + i * line_height
        draw.text((x, y), text, fill=(0, 0, 0), font=load_font(size, bold=(i == 0)))
        boxes.append({"text": text, "box": text_box(draw, (x, y), text, load_font(size, bold=(i == 0)))})
    caption = "\n".join(lines)
    return DemoRecord("ocr", caption.encode("utf-8"), {"lines": boxes, "document": doc}, [("png", image)], lang="en"), image
