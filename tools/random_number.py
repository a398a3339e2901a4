"""Example tool: a random integer in a range (the tool of AssemblyAI's Twilio sample)."""

from __future__ import annotations

import random
from typing import Annotated

from relay.tools import tool


@tool
def generate_random_number(
    minimum: Annotated[int, "Smallest allowed value"],
    maximum: Annotated[int, "Largest allowed value"],
) -> dict[str, int]:
    """Generate a random whole number between a minimum and a maximum, both included. Use it
    when the caller asks for a random number, a dice roll or a coin toss (1 or 2)."""
    if minimum > maximum:
        minimum, maximum = maximum, minimum  # "between 10 and 1" still has an answer
    return {"result": random.randint(minimum, maximum),
            "minimum": minimum, "maximum": maximum}
