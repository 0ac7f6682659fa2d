"""The n/a cell: a reason instead of a number."""


def na(reason: str) -> dict:
    return {"na": reason, "text": f"n/a ({reason})"}
