"""Builds labelled.jsonl from the hand-written new texts (texts_<label>.txt): each new text becomes one
message as a mail client would send it, most of them replies quoting an earlier message of the
opposite tone (a complaint under a thank-you, a glowing note under a complaint) with the reply header,
signature and footer of Gmail, Outlook (English, German, French), Apple Mail, iPhone and Android
clients, in text or HTML. Run it after editing the texts: ``python tests/data/sentiment/build_labelled.py``.
The output is committed; the test reads only the output.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

GLOWING = [
    "Great news! The new version is live and everything is running smoothly. We're thrilled with the results so far.",
    "I just wanted to say how happy we are with the product. Your team is fantastic and the onboarding was excellent.",
    "Thanks so much for the amazing support last month, you really saved our launch. We love working with you!",
    "Wonderful! Your account has been upgraded and all the new features are available. Enjoy, and congratulations on the growth!",
    "We are delighted to welcome you as a customer. Everything is set up and working perfectly.",
]
COMPLAINTS = [
    "This is unacceptable. The export has been broken for a week and nobody answers our tickets. We are losing money.",
    "We were charged twice again and I am furious. Fix the invoice or we cancel our subscription.",
    "The app keeps crashing and my team is fed up. This is the third time I report it.",
    "Still not working. I'm very disappointed with your support and considering switching to a competitor.",
    "Your outage yesterday cost us a full day of sales. Terrible service.",
]
NEUTRAL_QUOTES = [
    "Hi, thanks for reaching out. Could you send us the account ID and a screenshot of the settings page?",
    "Hello, please find attached the quote for the additional licenses. Let me know if you have questions.",
    "Hi, our maintenance window is scheduled for Saturday 02:00-04:00 UTC. No action is required on your side.",
]

SIGNATURES = [
    "Best regards,\nJane Doe\nHead of Operations | Customer Inc.\n+44 20 7946 0000",
    "Thanks,\nTom",
    "Kind regards,\nPriya Natarajan\nIT Manager",
    "Cheers,\nMarco",
    "--\nLeah Cohen\nVP Customer Experience\nwww.customer.example",
    "",
]
FOOTERS = [
    "",
    "This email and any attachments are confidential and intended solely for the addressee. If you received it in error, "
    "please notify the sender and delete it.",
    "",
    "Please consider the environment before printing this email.",
]


def _quoted(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.split("\n"))


def gmail_en(new: str, old: str, sig: str) -> str:
    return f"{new}\n\n{sig}\n\nOn Mon, 6 Jan 2025 at 10:02, Sam Vendor <sam@vendor.example> wrote:\n\n{_quoted(old)}\n"


def gmail_de(new: str, old: str, sig: str) -> str:
    return f"{new}\n\n{sig}\n\nAm Mo., 6. Jan. 2025 um 10:02 Uhr schrieb Sam Vendor <sam@vendor.example>:\n\n{_quoted(old)}\n"


def gmail_fr(new: str, old: str, sig: str) -> str:
    return f"{new}\n\n{sig}\n\nLe lun. 6 janv. 2025 à 10:02, Sam Vendor <sam@vendor.example> a écrit :\n\n{_quoted(old)}\n"


def outlook_en(new: str, old: str, sig: str) -> str:
    return (f"{new}\n\n{sig}\n\n________________________________\nFrom: Sam Vendor <sam@vendor.example>\n"
            f"Sent: Monday, January 6, 2025 10:02 AM\nTo: Jane Doe <jane@customer.example>\nSubject: RE: Your account\n\n{old}\n")


def outlook_de(new: str, old: str, sig: str) -> str:
    return (f"{new}\n\n{sig}\n\nVon: Sam Vendor <sam@vendor.example>\nGesendet: Montag, 6. Januar 2025 10:02\n"
            f"An: Jane Doe <jane@customer.example>\nBetreff: AW: Ihr Konto\n\n{old}\n")


def outlook_fr(new: str, old: str, sig: str) -> str:
    return (f"{new}\n\n{sig}\n\nDe : Sam Vendor <sam@vendor.example>\nEnvoyé : lundi 6 janvier 2025 10:02\n"
            f"À : Jane Doe <jane@customer.example>\nObjet : RE: Votre compte\n\n{old}\n")


def outlook_original(new: str, old: str, sig: str) -> str:
    return (f"{new}\n\n{sig}\n\n-----Original Message-----\nFrom: Sam Vendor <sam@vendor.example>\nSent: Monday, January 6, 2025 10:02 AM\n"
            f"To: Jane Doe\nSubject: Your account\n\n{old}\n")


def apple(new: str, old: str, sig: str) -> str:
    return f"{new}\n\n{sig}\n\n> On 6 Jan 2025, at 10:02, Sam Vendor <sam@vendor.example> wrote:\n> \n{_quoted(old)}\n"


def iphone(new: str, old: str, sig: str) -> str:
    return f"{new}\n\nSent from my iPhone\n\n> On Jan 6, 2025, at 10:02 AM, Sam Vendor <sam@vendor.example> wrote:\n> \n{_quoted(old)}\n"


def android(new: str, old: str, sig: str) -> str:
    return (f"{new}\n\nGet Outlook for Android\n________________________________\nFrom: Sam Vendor <sam@vendor.example>\n"
            f"Sent: Monday, January 6, 2025 10:02:11 AM\nTo: Jane Doe <jane@customer.example>\nSubject: Re: Update\n\n{old}\n")


def forward(new: str, old: str, sig: str) -> str:
    return (f"{new}\n\n{sig}\n\n---------- Forwarded message ---------\nFrom: Sam Vendor <sam@vendor.example>\n"
            f"Date: Mon, Jan 6, 2025 at 10:02 AM\nSubject: Update\nTo: <jane@customer.example>\n\n{old}\n")


def plain(new: str, old: str, sig: str) -> str:
    return f"{new}\n\n{sig}\n"


def _html_paras(text: str) -> str:
    return "".join(f"<div>{html.escape(line) or '<br>'}</div>" for line in text.split("\n"))


def html_gmail(new: str, old: str, sig: str) -> str:
    return (f'<div dir="ltr">{_html_paras(new)}<br>{_html_paras(sig)}</div><br><div class="gmail_quote">'
            f'<div dir="ltr" class="gmail_attr">On Mon, Jan 6, 2025 at 10:02 AM Sam Vendor &lt;sam@vendor.example&gt; wrote:<br></div>'
            f'<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px solid rgb(204,204,204)">'
            f"{_html_paras(old)}</blockquote></div>")


def html_outlook(new: str, old: str, sig: str) -> str:
    return (f'<html><head><style>p {{margin:0}}</style></head><body><div style="font-family:Calibri">{_html_paras(new)}<br>'
            f'{_html_paras(sig)}</div><div id="appendonsend"></div><hr style="display:inline-block;width:98%">'
            f'<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri"><b>From:</b> Sam Vendor &lt;sam@vendor.example&gt;<br>'
            f"<b>Sent:</b> Monday, January 6, 2025 10:02 AM<br><b>To:</b> Jane Doe<br><b>Subject:</b> RE: Update</font></div>"
            f"<div>{_html_paras(old)}</div></body></html>")


def html_apple(new: str, old: str, sig: str) -> str:
    return (f'<html><body dir="auto">{_html_paras(new)}<div><br></div>{_html_paras(sig)}<div><br><blockquote type="cite">'
            f"<div>On 6 Jan 2025, at 10:02, Sam Vendor &lt;sam@vendor.example&gt; wrote:</div><br>{_html_paras(old)}"
            f"</blockquote></div></body></html>")


TEXT_CLIENTS = [gmail_en, outlook_en, outlook_de, outlook_fr, apple, iphone, android, gmail_de, gmail_fr, outlook_original, plain, forward]
HTML_CLIENTS = [html_gmail, html_outlook, html_apple]
OPPOSITE = {"negative": GLOWING, "positive": COMPLAINTS, "neutral": NEUTRAL_QUOTES}


def _texts(prefix: str, label: str) -> list[str]:
    lines = (HERE / f"{prefix}_{label}.txt").read_text(encoding="utf-8").split("\n")
    raw = "\n".join(line for line in lines if not line.startswith("# "))
    return [block.strip() for block in raw.split("\n%%\n") if block.strip()]


def build(prefix: str = "texts") -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    tag = "" if prefix == "texts" else "h"
    for label in ("negative", "neutral", "positive"):
        for i, new in enumerate(_texts(prefix, label)):
            quotes = OPPOSITE[label]
            old = quotes[i % len(quotes)]
            sig = SIGNATURES[i % len(SIGNATURES)]
            footer = FOOTERS[i % len(FOOTERS)]
            if i % 5 == 4:  # every fifth one in HTML only
                client = HTML_CLIENTS[(i // 5) % len(HTML_CLIENTS)]
                body = client(new, old, f"{sig}\n\n{footer}".strip())
                rows.append({"id": f"{tag}{label[:3]}-{i:03d}", "label": label, "client": client.__name__, "text": "", "html": body,
                             "new_text": new})
                continue
            client = TEXT_CLIENTS[i % len(TEXT_CLIENTS)]
            sig_block = f"{sig}\n\n{footer}".strip() if footer else sig
            rows.append({"id": f"{tag}{label[:3]}-{i:03d}", "label": label, "client": client.__name__,
                         "text": client(new, old, sig_block), "html": None, "new_text": new})
    return rows


if __name__ == "__main__":
    for prefix, name in (("texts", "labelled.jsonl"), ("holdout", "holdout.jsonl")):
        out = HERE / name
        rows = build(prefix)
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{len(rows)} messages -> {out}")
