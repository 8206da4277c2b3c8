"""DragonFly Mail Agent (dma): "There was an error delivering your mail to <a@b>."."""
from __future__ import annotations

import re

from proxy.dsn.detectors.base import TextFormat, lead_sentences

detect = TextFormat(
    "dragonfly",
    sign=("this is the dragonfly mail agent",),
    start=re.compile(r"This is the DragonFly Mail Agent", re.I),
    end=re.compile(r"^Message headers follow", re.I | re.M),
    strategies=(lead_sentences,),
)
