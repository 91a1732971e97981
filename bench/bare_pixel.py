"""The baseline for bench/pixel.py: a bare Starlette app answering the same GIF with the same headers."""

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
       b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
HEADERS = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache",
           "Expires": "Thu, 01 Jan 1970 00:00:00 GMT", "X-Robots-Tag": "noindex", "Content-Length": str(len(GIF))}


async def pixel(request):  # type: ignore[no-untyped-def]
    return Response(GIF, media_type="image/gif", headers=HEADERS)


app = Starlette(routes=[Route("/track/open/{email_id}/{recipient_hash}", pixel)])
