"""Why a server refuses our tokens: a refused key or secret, or clocks that disagree. Shared by every mode.

livekit-api's client reads a 401 only as "unauthenticated" (the server answers in plain text, which its Twirp
client does not parse), so the words that would tell (livekit/protocol auth → golang-jwt: "token is not valid
yet", "token is expired", "signature is invalid", "invalid API key") are lost. This probe asks again itself: a
fresh token as the SDKs mint it (valid an hour from our now), and when that is refused, the same key's token valid
PROBE_WINDOW_S either side of our now. The second accepted means the key and secret are right and the clocks are
not; refused, it is the key or the secret. The server's `Date` header on the same answer measures the skew. The
request is ListRooms for ONE room name (the run's own): on a deployment elsewhere nothing else is listed.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
import jwt

from backend.logging import redact

LEEWAY_S = 60  # livekit/protocol auth: the server accepts a token this far outside its nbf/exp
PROBE_TTL_S = 3600  # the fresh token lives an hour, as users' tokens do
PROBE_WINDOW_S = 3 * 3600  # the wide token: valid from 3 h before our now to 3 h after


@dataclass(frozen=True)
class Answer:
    status: int
    said: str  # what the server said, redacted (a 401 echoes the whole token)
    skew_s: float | None  # the server's clock minus ours (its Date header; positive: ours is behind)

    def as_dict(self) -> dict[str, object]:
        return {"status": self.status, "said": self.said}


@dataclass(frozen=True)
class Verdict:
    fresh: Answer
    wide: Answer | None  # asked only when the fresh token was refused

    @property
    def accepted(self) -> bool:
        return self.fresh.status == 200

    @property
    def clock(self) -> bool:
        """Refused for its validity window only: the wide token passed."""
        return self.fresh.status == 401 and self.wide is not None and self.wide.status == 200

    @property
    def unknown_key(self) -> bool:
        return not self.accepted and not self.clock and "invalid api key" in (self.wide or self.fresh).said.lower()


def _token(key: str, secret: str, nbf: float, exp: float) -> str:
    claims = {"iss": key, "sub": "bootstrap-probe", "nbf": int(nbf), "exp": int(exp), "video": {"roomList": True}}
    return jwt.encode(claims, secret, algorithm="HS256")


async def ask(session: aiohttp.ClientSession, http_url: str, key: str, secret: str, room: str, nbf: float,
              exp: float) -> Answer:  # fmt: skip
    """ListRooms for `room` only, with a token valid from `nbf` to `exp` (our clock)."""
    url = http_url.rstrip("/") + "/twirp/livekit.RoomService/ListRooms"
    headers = {"Authorization": f"Bearer {_token(key, secret, nbf, exp)}", "Content-Type": "application/json"}
    async with session.post(url, json={"names": [room]}, headers=headers) as response:
        text = await response.text()
        ours = datetime.now(UTC)
        date = response.headers.get("Date")
    with contextlib.suppress(ValueError, AttributeError):  # a Twirp JSON error: {"code": …, "msg": …}
        text = str(json.loads(text).get("msg", text))
    skew = None
    if date:
        with contextlib.suppress(TypeError, ValueError):
            skew = round((parsedate_to_datetime(date) - ours).total_seconds() + 0.5, 1)  # Date truncates to 1 s
    return Answer(response.status, redact(text)[:300], skew)


async def probe(session: aiohttp.ClientSession, http_url: str, key: str, secret: str, room: str) -> Verdict:
    now = time.time()
    fresh = await ask(session, http_url, key, secret, room, now, now + PROBE_TTL_S)
    if fresh.status != 401:
        return Verdict(fresh, None)
    return Verdict(fresh, await ask(session, http_url, key, secret, room, now - PROBE_WINDOW_S, now + PROBE_WINDOW_S))


def clock_cause(verdict: Verdict) -> str:
    """The clock failure's cause: what was refused, what passed, and the measured skew."""
    skew = verdict.fresh.skew_s
    if skew is None:
        measured = "off (the server sent no Date header to measure it)"
    else:
        measured = f"{-skew:.0f} s ahead of the server's" if skew < 0 else f"{skew:.0f} s behind the server's"
    return (
        f"the server refused a fresh token but accepted the same key's token valid 3 h either side of now: the clocks "
        f"disagree: this machine's is {measured} (its Date header) (it said: {verdict.fresh.said})"
    )
