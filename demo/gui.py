"""GUI screens with element boxes.

Part of the demo corpus (`vlmloom.demo.corpus`); every output is a function of the seeded `random.Random` passed in.
"""
from __future__ import annotations

import random

from PIL import Image, ImageDraw

from vlmloom.demo.common import DemoRecord, load_font, with_article
from vlmloom.demo.documents import CITIES, ITEMS, STREETS
from vlmloom.demo.scenes import COLOURS, backdrop, jitter

APPS = ("Notes", "Weather", "Mail", "Calendar", "Bank", "Photos", "Music", "Travel", "Shop", "Fitness")
SCREENS = {
    "login": (["Email", "Password"], ["Sign in", "Cancel"], ["Remember me"]),
    "signup": (["Name", "Email", "Password"], ["Create account", "Back"], ["I agree to the terms"]),
    "search": (["Search"], ["Search", "Clear"], ["Only exact matches"]),
    "settings": (["Display name", "Language"], ["Save", "Reset"], ["Dark mode", "Notifications"]),
    "checkout": (["Card number", "Expiry date", "Address"], ["Pay now", "Edit cart"], ["Save card"]),
    "contact": (["Subject", "Message"], ["Send", "Discard"], ["Copy to me"]),
}
PEOPLE = ("Anna Berg", "Omar Haddad", "Li Wei", "Maria Lopez", "Tom Becker", "Sara Nilsson", "Ken Sato", "Eva Novak",
          "Raj Patel", "Julia Costa", "Noah Fischer", "Mia Rossi", "Ivan Petrov", "Lena Vogel", "Ali Demir", "Zoe Martin")
FIELD_VALUES = {
    "Name": lambda rng: rng.choice(PEOPLE),
    "Display name": lambda rng: rng.choice(PEOPLE).split()[0] + str(rng.randint(1, 99)),
    "Email": lambda rng: rng.choice(PEOPLE).lower().replace(" ", ".") + f"{rng.randint(1, 99)}@example.com",
    "Search": lambda rng: " ".join(rng.sample(ITEMS, 2)).lower(),
    "Subject": lambda rng: f"Order {rng.randint(1000, 9999)} {rng.choice(('delayed', 'question', 'refund', 'invoice'))}",
    "Address": lambda rng: f"{rng.randint(1, 199)} {rng.choice(STREETS)}, {rng.choice(CITIES)}",
    "Language": lambda rng: rng.choice(("English", "Deutsch", "Français", "Español", "Italiano", "Svenska")),
}
GUI_CAPTIONS = (
    '{app} app, {screen} screen on a {device} in {theme} mode with {a_banner} banner{side}. '
    'The {field} field reads "{value}" and the main button says "{primary}".',
    'Screenshot of the {screen} page in {app} ({device}, {theme} theme): {a_banner} header picture{side}, '
    '"{value}" typed into {field}, and a "{primary}" button.',
    '{Theme} {app} {screen} form on a {device}; {field} is filled with "{value}", {a_banner} banner sits on top{side}, '
    'and "{primary}" submits it.',
)
THEMES = ((40, 100, 200), (30, 150, 100), (200, 80, 40), (120, 60, 170), (50, 50, 60), (0, 140, 160))


def gui_record(rng: random.Random) -> tuple[DemoRecord, Image.Image]:
    app, screen = rng.choice(APPS), rng.choice(sorted(SCREENS))
    fields, buttons, checks = SCREENS[screen]
    w = rng.choice((360, 412, 480, 800, 1024))
    theme = jitter(rng.choice(THEMES), rng, 20)
    dark = rng.random() < 0.3
    background = (34, 36, 42) if dark else (255, 255, 255) if rng.random() < 0.6 else (242, 244, 248)
    ink, field_fill = ((230, 230, 235), (50, 53, 60)) if dark else ((50, 50, 55), (255, 255, 255))
    size = 22 if w < 600 else 24
    font, bold = load_font(size), load_font(size + 2, bold=True)
    pad = 24 if w < 600 else rng.randint(60, 200)
    field_w = w - 2 * pad
    panel = 0 if w < 600 or rng.random() < 0.3 else int(w * rng.uniform(0.25, 0.4))  # a side picture on wide screens
    panel_left = rng.random() < 0.5
    if panel:
        field_w = w - panel - 2 * pad
        if panel_left:
            pad += panel
    banner = rng.randint(80, 300)  # a picture banner under the title bar, as app screens often have
    h = 90 + banner + len(fields) * 95 + len(checks) * 50 + 120 + rng.randint(0, 120)
    image = backdrop(w, h, background, rng, strength=0.6)
    banner_colour, panel_colour = rng.choice(sorted(COLOURS)), rng.choice(sorted(COLOURS))
    image.paste(backdrop(w, banner, jitter(COLOURS[banner_colour], rng, 30), rng, strength=2.0), (0, 64))
    if panel:
        image.paste(backdrop(panel, h - 64 - banner, jitter(COLOURS[panel_colour], rng, 30), rng, strength=2.0),
                    (0 if panel_left else w - panel, 64 + banner))
    draw = ImageDraw.Draw(image)
    elements = []
    filled: tuple[str, str] | None = None
    title = f"{app} - {screen.capitalize()}"
    draw.rectangle([0, 0, w, 64], fill=theme)
    draw.text((pad, 32), title, fill=(255, 255, 255), font=bold, anchor="lm")
    elements.append({"label": title, "type": "title", "box": [int(v) for v in draw.textbbox((pad, 32), title, font=bold, anchor="lm")]})
    y = 90 + banner
    for name in fields:
        draw.text((pad, y), name, fill=ink, font=font)
        box = [pad, y + size + 8, pad + field_w, y + size + 8 + 44]
        draw.rounded_rectangle(box, radius=6, outline=(150, 150, 160), width=2, fill=field_fill)
        if name in FIELD_VALUES and not filled:
            filled = (name, FIELD_VALUES[name](rng))
            draw.text((box[0] + 12, (box[1] + box[3]) // 2), filled[1], fill=ink, font=font, anchor="lm")
        elements.append({"label": name, "type": "text_field", "box": box})
        y += 95
    for name in checks:
        box = [pad, y, pad + 26, y + 26]
        draw.rectangle(box, outline=theme, width=3, fill=theme if rng.random() < 0.5 else (255, 255, 255))
        draw.text((pad + 40, y + 13), name, fill=ink, font=font, anchor="lm")
        elements.append({"label": name, "type": "checkbox", "box": box})
        y += 50
    y += 10
    x = pad
    for i, name in enumerate(buttons):
        bw = int(font.getlength(name)) + 48
        box = [x, y, x + bw, y + 52]
        primary = i == 0
        draw.rounded_rectangle(box, radius=8, fill=theme if primary else (225, 228, 232))
        draw.text(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2), name, fill=(255, 255, 255) if primary else (30, 30, 30), font=font, anchor="mm")
        elements.append({"label": name, "type": "button", "box": box})
        x += bw + 20
    assert filled is not None  # every screen in SCREENS has a field with a FIELD_VALUES generator
    theme_name = "dark" if dark else "light"
    side = f" and {with_article(panel_colour)} side panel on the {'left' if panel_left else 'right'}" if panel else ""
    # slots every few words keep captions of the same screen type apart for text dedup
    caption = rng.choice(GUI_CAPTIONS).format(
        app=app, screen=screen, device="phone" if w < 600 else "desktop", theme=theme_name, Theme=theme_name.capitalize(),
        a_banner=with_article(banner_colour), side=side, field=filled[0], value=filled[1], primary=buttons[0])
    meta = {"app": app, "screen": screen, "elements": elements}
    return DemoRecord("gui", caption.encode("utf-8"), meta, [("png", image)], lang="en"), image
