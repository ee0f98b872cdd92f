""""Every N kimg": the one rule for when a periodic action (sample grids, evaluation, checkpoints) is due.

An interval of `every_kimg` thousand images is `images(every_kimg)` images (rounded); after iteration `step`
(batch images each) the action is due when the images seen crossed a multiple of it since `since`:
crossed(since, step, batch, every) = (step * batch) // every > (since * batch) // every.
"""


def images(every_kimg, field: str) -> int:
    """The interval in images; `field` names the config field in the error for an interval under 1 image."""
    n = int(round(float(every_kimg) * 1000))
    if n < 1:
        raise ValueError(f"{field}: {every_kimg} kimg gives no interval (under one image)")
    return n


def crossed(since: int, step: int, batch: int, every: int) -> bool:
    """Whether the images of iterations since..step crossed a multiple of `every` images."""
    return (step * batch) // every > (since * batch) // every
