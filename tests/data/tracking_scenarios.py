"""Labelled open/click sequences for the tracking signal (issue 22): people and machines.

Each :class:`Scenario` is one tracked email and the hits it gets, in seconds after sending, each
hit labelled ``human``, ``machine`` or ``proxy`` (Gmail's image proxy: a machine fetch that stands
for a person's open, so flagged and counted). ``source`` says where the pattern and its label come
from. Addresses of people are documentation addresses (RFC 5737 192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24; RFC 3849 2001:db8::/32) standing for ISP and company networks; machine and
virtual-desktop addresses are real ones from the providers' published ranges shipped in
``pipeline/data/tracking`` (the file is named beside each).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SCENARIOS", "H", "Scenario"]


@dataclass(frozen=True)
class H:
    t: float  # seconds after sending
    kind: str  # open | click
    ip: str
    ua: str
    truth: str = "human"  # human | machine | proxy
    link: int = 0
    method: str = "GET"


@dataclass(frozen=True)
class Scenario:
    name: str
    group: str
    links: int
    hits: tuple[H, ...]
    source: str


# User agents, with where each string was seen.
# Chrome's reduced UA (chromium.org "User-Agent Reduction")
CHROME_WIN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
CHROME_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"  # same
CHROME_ANDROID = "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36"  # same
# learn.microsoft.com "Microsoft Edge user agent string"
EDGE_WIN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0"
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"  # MDN "User-Agent" Firefox examples
# MDN Safari example form
SAFARI_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15"
# same
SAFARI_IOS = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
              "Mobile/15E148 Safari/604.1")
# Apple Mail (WebKit without Version/Safari); tests/unit/test_tracking_stage.py
APPLE_MAIL = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
# iOS Mail (no Safari token)
IOS_MAIL = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"
OUTLOOK_MSIE = ("Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 10.0; WOW64; Trident/7.0; .NET4.0C; .NET4.0E; .NET CLR 2.0.50727; "
                ".NET CLR 3.0.30729; .NET CLR 3.5.30729; Microsoft Outlook 16.0.5257; ms-office; MSOffice 16)")  # shon/httpagentparser#91
OUTLOOK_16 = "Microsoft Office/16.0 (Microsoft Outlook 16.0.8241; Pro)"  # browscap/browscap#1634
MSOFFICE_16 = "Mozilla/4.0 (compatible; ms-office; MSOffice 16)"  # browscap/browscap#2795, ua-parser/uap-core#405
# Thunderbird's UA form (Gecko + Thunderbird/version)
THUNDERBIRD = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Thunderbird/128.3.0"
SAMSUNG_MAIL = ("Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 "
                "Chrome/120.0.0.0 Mobile Safari/537.36")  # Android WebView form (Version/4.0), as Android mail apps render
# gophish/gophish#1390, browscap#1108
GMAIL_PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
GMAIL_PREFETCH = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/42.0.2311.135 "
                  "Safari/537.36 Edge/12.246 Mozilla/5.0")  # mautic/mautic#10245, ankane/ahoy_email#139: from Google IPs on delivery
SAFELINKS_CHROME57 = "Mozilla/5.0 (Windows NT 6.1) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/57.0.2987.133 Safari/537.36"  # gophish#973
WHATSAPP = "WhatsApp/2.17.190 A"  # allinurl/goaccess#808
TELEGRAM = "TelegramBot (like TwitterBot)"  # crawler-user-agents instances
SLACK = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"  # crawler-user-agents instances
# nielsbasjes/yauaa#477 (Teams/Skype)
SKYPE_PREVIEW = "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5 skype-url-preview@microsoft.com"
# issue 22 (old-IE previews); IE 7 form of browscap#666 without Office's tokens
OLD_IE7 = "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.1; Trident/7.0)"
IE8_WIN7 = "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1; Trident/4.0)"  # gophish#1555: "IE 8 on Windows 7", 1-3 s after sending
BINGPREVIEW = "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/534+ (KHTML, like Gecko) BingPreview/1.0b"  # phpList/phplist3#415
HEADLESS = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/74.0.3729.169 "
            "Safari/537.36")  # crawler-user-agents instances
# resend/resend-node#901
RESEND_SCANNER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/146.0.0.0 Safari/537.36"
MPP = "Mozilla/5.0"  # Apple Mail Privacy Protection's bare UA (notes §4)

# Addresses of people (documentation ranges) and of machines (shipped ranges, file in brackets).
ISP = [f"198.51.100.{i}" for i in range(10, 90)]
ISP2 = [f"203.0.113.{i}" for i in range(10, 90)]
CORP = [f"192.0.2.{i}" for i in range(10, 60)]
GOOGLE_PROXY = "66.102.8.20"  # google.txt (66.102.0.0/20)
GOOGLE_PROXY2 = "66.249.84.10"  # google.txt (66.249.64.0/19)
GOOGLE_SVC = "74.125.210.5"  # google.txt (74.125.0.0/16)
APPLE = "17.58.63.9"  # apple.txt
AZURE_VDI = "20.50.1.10"  # azure.txt (20.50.0.0/15)
AWS_VDI = "3.80.10.20"  # aws.txt (3.64.0.0/11)
GCP_VDI = "34.68.1.1"  # gcp.txt (34.68.0.0/14)
EOP = "40.107.218.12"  # microsoft365.txt (EOP 40.107.0.0/16); the Safe Links address of gophish#973
EOP2 = "40.92.5.5"  # microsoft365.txt (EOP 40.92.0.0/15)
BARRACUDA = "64.235.150.10"  # gateways.txt (64.235.144.0/20)
MIMECAST = "205.139.110.20"  # gateways.txt (205.139.110.0/24)
PROOFPOINT = "148.163.130.5"  # gateways.txt (148.163.128.0/19)
CLOUDFLARE_SEG = "104.30.40.9"  # gateways.txt (104.30.32.0/19)
AWS = ["52.20.1.2", "3.101.5.6", "54.160.7.8", "18.200.1.1"]  # aws.txt
AZURE = ["20.42.5.5", "13.91.1.1", "40.76.3.3"]  # azure.txt
GCP = ["35.196.1.1", "34.74.2.2"]  # gcp.txt
TEAMS = "52.112.5.5"  # microsoft365.txt (Teams 52.112.0.0/14)
BING = "157.55.39.76"  # azure.txt (157.55.38.0/23); the msnbot address of CIDRAM/CIDRAM#242
UNLISTED_SCANNER = ["192.0.2.200", "192.0.2.201", "192.0.2.202", "192.0.2.203"]  # gateways whose networks are in no list
RESEND_SCANNER_IP = "168.90.91.133"  # resend/resend-node#901
FB = "31.13.66.1"  # WhatsApp's fetcher (Meta; in no shipped list)

NOTES4 = "../shared/notes/anchors-tracking.md §4"

SCENARIOS: tuple[Scenario, ...] = (
    # ---------------------------------------------------------------- people: webmail and browsers
    Scenario("webmail chrome open, click", "human/webmail", 3, (
        H(3600, "open", ISP[0], CHROME_WIN), H(3650, "click", ISP[0], CHROME_WIN, link=0)),
        "a person reading in a browser an hour later (issue 22: every human case)"),
    Scenario("webmail firefox open only", "human/webmail", 3, (H(7200, "open", ISP[1], FIREFOX_LINUX),),
             "a person reading in Firefox"),
    Scenario("outlook on the web in edge", "human/webmail", 2, (
        H(900, "open", CORP[0], EDGE_WIN), H(1000, "click", CORP[0], EDGE_WIN, link=1)), "Outlook on the web renders in the browser"),
    Scenario("webmail, two ctrl-clicks 3 s apart", "human/webmail", 4, (
        H(1200, "open", ISP[2], CHROME_MAC), H(1260, "click", ISP[2], CHROME_MAC, link=0),
        H(1263, "click", ISP[2], CHROME_MAC, link=2)), "a person opening two tabs; further apart than a scanner's second"),
    Scenario("reads right after arrival", "human/webmail", 2, (
        H(30, "open", ISP[3], CHROME_WIN), H(45, "click", ISP[3], CHROME_WIN, link=0)),
        "a person with a notification open: 30 s after sending is possible for a person (Mautic uses 2 s, notes §1)"),
    Scenario("clicks every link slowly", "human/webmail", 3, (
        H(500, "open", ISP[4], CHROME_WIN), H(560, "click", ISP[4], CHROME_WIN, link=0),
        H(640, "click", ISP[4], CHROME_WIN, link=1), H(700, "click", ISP[4], CHROME_WIN, link=2)),
        "all links, a minute apart: not a burst"),
    Scenario("two-link email, both links 40 s apart", "human/webmail", 2, (
        H(800, "open", ISP[5], FIREFOX_LINUX), H(830, "click", ISP[5], FIREFOX_LINUX, link=0),
        H(870, "click", ISP[5], FIREFOX_LINUX, link=1)), "every link of a two-link email, but not within a second"),
    Scenario("opens at home and at work", "human/webmail", 1, (
        H(1000, "open", ISP[6], CHROME_WIN), H(20000, "open", CORP[1], EDGE_WIN)), "one person, two networks, hours apart"),
    Scenario("reopens next day on phone", "human/mobile", 1, (
        H(2000, "open", ISP[7], CHROME_MAC), H(90000, "open", ISP2[0], SAFARI_IOS)), "one person, two devices"),
    Scenario("ipv6 mobile network", "human/mobile", 2, (
        H(4000, "open", "2001:db8:85a3::8a2e:370:7334", CHROME_ANDROID), H(4040, "click", "2001:db8:85a3::8a2e:370:7334", CHROME_ANDROID)),
        "a person on an IPv6 mobile network (RFC 3849 address)"),
    # ---------------------------------------------------------------- people: Gmail (proxy)
    Scenario("gmail proxy open, click from phone", "human/gmail", 3, (
        H(1800, "open", GOOGLE_PROXY, GMAIL_PROXY, "proxy"), H(1830, "click", ISP2[1], CHROME_ANDROID, link=1)),
        "Gmail's proxy stands for the open (mautic#16069), the click comes from the person's device"),
    Scenario("gmail proxy open only", "human/gmail", 2, (H(900, "open", GOOGLE_PROXY2, GMAIL_PROXY, "proxy"),), "gophish#1390"),
    Scenario("gmail app: proxy open, click in chrome", "human/gmail", 2, (
        H(2400, "open", GOOGLE_PROXY, GMAIL_PROXY, "proxy"), H(2500, "click", ISP2[2], CHROME_ANDROID, link=0)),
        "the Gmail app loads images through the proxy too"),
    Scenario("gmail proxy then ctrl-clicks two links", "human/gmail", 5, (
        H(3000, "open", GOOGLE_PROXY, GMAIL_PROXY, "proxy"), H(3100, "click", ISP2[3], CHROME_WIN, link=0),
        H(3100.6, "click", ISP2[3], CHROME_WIN, link=3)),
        "two links within a second, but the email was opened (through the proxy) long before: a person"),
    # ---------------------------------------------------------------- people: Outlook
    Scenario("outlook desktop (word engine UA) open, click", "human/outlook", 2, (
        H(600, "open", CORP[2], OUTLOOK_MSIE), H(660, "click", CORP[2], CHROME_WIN, link=1)), "httpagentparser#91: Outlook's image fetch"),
    Scenario("outlook 2016 UA open", "human/outlook", 1, (H(1200, "open", CORP[3], OUTLOOK_16),), "browscap#1634"),
    Scenario("outlook ms-office UA open", "human/outlook", 1, (H(5000, "open", CORP[4], MSOFFICE_16),), "browscap#2795"),
    Scenario("outlook images blocked: click only", "human/outlook", 3, (H(7200, "click", CORP[5], EDGE_WIN, link=2),),
             "Outlook blocks images by default (gophish#1294): a click without an open"),
    Scenario("outlook open, click, second click an hour later", "human/outlook", 2, (
        H(300, "open", CORP[6], OUTLOOK_MSIE), H(420, "click", CORP[6], EDGE_WIN, link=0),
        H(4020, "click", CORP[6], EDGE_WIN, link=0)), "clicking the same link again later"),
    # ---------------------------------------------------------------- people: Apple Mail
    Scenario("apple mail without MPP", "human/apple", 2, (
        H(2000, "open", ISP2[4], APPLE_MAIL), H(2100, "click", ISP2[4], SAFARI_MAC, link=0)), "Apple Mail's own fetch (full UA)"),
    Scenario("ios mail without MPP", "human/apple", 1, (H(2500, "open", ISP2[5], IOS_MAIL),), "iOS Mail's own fetch"),
    Scenario("apple mail with MPP, then a click", "human/apple", 2, (
        H(40, "open", APPLE, MPP, "machine"), H(3000, "click", ISP2[6], SAFARI_IOS, link=1)),
        "MPP prefetches on delivery (notes §4, apple_mpp); the person's click is theirs"),
    Scenario("apple mail with MPP, click much later", "human/apple", 3, (
        H(25, "open", APPLE, MPP, "machine"), H(9000, "click", ISP2[7], SAFARI_MAC, link=2)), "as above"),
    Scenario("full apple mail UA from apple's network", "human/apple", 1, (H(1500, "open", "17.58.101.4", APPLE_MAIL),),
             "a full Mail UA is a person even inside 17.0.0.0/8 (Apple's own staff); only the bare UA is MPP"),
    # ---------------------------------------------------------------- people: mail apps
    Scenario("thunderbird open, firefox click", "human/apps", 2, (
        H(1600, "open", ISP[8], THUNDERBIRD), H(1700, "click", ISP[8], FIREFOX_LINUX, link=0)), "a desktop mail app"),
    Scenario("android mail app", "human/apps", 1, (H(3300, "open", ISP2[8], SAMSUNG_MAIL),), "an Android mail app's WebView"),
    Scenario("iphone safari after ios mail", "human/apps", 2, (
        H(5000, "open", ISP2[9], IOS_MAIL), H(5050, "click", ISP2[9], SAFARI_IOS, link=1)), "iOS Mail then Safari"),
    # ---------------------------------------------------------------- people: virtual desktops in clouds
    Scenario("windows 365 / azure virtual desktop: open then click", "human/vdi", 3, (
        H(120, "open", AZURE_VDI, OUTLOOK_16), H(150, "click", AZURE_VDI, EDGE_WIN, link=0)),
        "issue 22: a person on a virtual desktop in Azure who opened first, then clicked, stays counted"),
    Scenario("azure vdi, outlook word-engine UA", "human/vdi", 2, (
        H(200, "open", AZURE_VDI, OUTLOOK_MSIE), H(260, "click", AZURE_VDI, EDGE_WIN, link=1)),
        "Outlook's MSIE 7 UA carries ms-office: not an old-IE preview"),
    Scenario("aws workspaces: open then click", "human/vdi", 3, (
        H(300, "open", AWS_VDI, CHROME_WIN), H(340, "click", AWS_VDI, CHROME_WIN, link=2)), "a desktop hosted in AWS"),
    Scenario("gcp-hosted desktop: open then click", "human/vdi", 2, (
        H(400, "open", GCP_VDI, CHROME_WIN), H(420, "click", GCP_VDI, CHROME_WIN, link=0)),
        "Google Cloud addresses are not Google's own services: no gmail_prefetch"),
    Scenario("gmail user on an azure desktop: proxy open, quick click", "human/vdi", 3, (
        H(180, "open", GOOGLE_PROXY, GMAIL_PROXY, "proxy"), H(240, "click", AZURE_VDI, CHROME_WIN, link=1)),
        "Gmail in a browser on a cloud desktop: the open comes through the proxy, the click from the desktop"),
    Scenario("azure vdi, click an hour later without open", "human/vdi", 2, (H(3600, "click", AZURE_VDI, EDGE_WIN, link=1),),
             "a cloud click long after delivery is a person (scanners click within minutes, anymail#200)"),
    # ---------------------------------------------------------------- people: forwarded mail
    Scenario("forwarded to a colleague", "human/forwarded", 2, (
        H(1000, "open", CORP[7], OUTLOOK_16), H(5000, "open", ISP[9], APPLE_MAIL), H(5100, "click", ISP[9], SAFARI_MAC, link=0)),
        "the recipient forwards; the colleague's open and click are people (another network, later)"),
    Scenario("forwarded to a gmail user", "human/forwarded", 2, (
        H(800, "open", ISP[10], CHROME_WIN), H(4000, "open", GOOGLE_PROXY, GMAIL_PROXY, "proxy"),
        H(4050, "click", ISP2[11], CHROME_ANDROID, link=1)), "forwarded into Gmail: proxy open, then a click"),
    Scenario("forwarded, same link clicked by both people", "human/forwarded", 2, (
        H(600, "open", ISP[11], CHROME_WIN), H(650, "click", ISP[11], CHROME_WIN, link=0),
        H(7000, "open", ISP[12], FIREFOX_LINUX), H(7050, "click", ISP[12], FIREFOX_LINUX, link=0)),
        "two people, the same link, hours apart: not a re-scan"),

    # ================================================================ machines
    Scenario("safe links click from EOP", "machine/gateway", 2, (
        H(20, "click", EOP, SAFELINKS_CHROME57, "machine"), H(20.4, "click", EOP, SAFELINKS_CHROME57, "machine", link=1)),
        "gophish#973: two GETs from 40.107.218.12 (EOP) with Chrome 57 on delivery"),
    Scenario("EOP pixel fetch with a browser UA", "machine/gateway", 2, (H(15, "open", EOP2, CHROME_WIN, "machine"),),
             "Defender scans on delivery (notes §4; gophish#2549: every mail opened)"),
    Scenario("barracuda pixel and three links", "machine/gateway", 3, (
        H(30, "open", BARRACUDA, CHROME_WIN, "machine"), H(30.3, "click", BARRACUDA, CHROME_WIN, "machine", link=0),
        H(30.5, "click", BARRACUDA, CHROME_WIN, "machine", link=1), H(30.8, "click", BARRACUDA, CHROME_WIN, "machine", link=2)),
        "mautic#9162/#16263: Barracuda clicks every link"),
    Scenario("mimecast click with edge UA", "machine/gateway", 4, (H(60, "click", MIMECAST, EDGE_WIN, "machine", link=3),),
             "mautic#9162: Mimecast scans links"),
    Scenario("proofpoint pixel and link", "machine/gateway", 2, (
        H(90, "open", PROOFPOINT, CHROME_WIN, "machine"), H(92, "click", PROOFPOINT, CHROME_WIN, "machine", link=0)),
        "notes §4: Proofpoint clicks every link"),
    Scenario("proofpoint two-link scan in a six-link email", "machine/gateway", 6, (
        H(95, "click", PROOFPOINT, CHROME_WIN, "machine", link=2), H(95.5, "click", PROOFPOINT, CHROME_WIN, "machine", link=4)),
        "gateway network and two-link scan"),
    Scenario("cloudflare email security scan", "machine/gateway", 3, (
        H(50, "click", CLOUDFLARE_SEG, CHROME_WIN, "machine", link=1),), "Cloudflare Email Security egress (cloudflare-docs)"),
    Scenario("gateway from an unlisted network: pixel then 3 links", "machine/burst", 3, (
        H(120, "open", UNLISTED_SCANNER[0], CHROME_WIN, "machine"), H(120.4, "click", UNLISTED_SCANNER[0], CHROME_WIN, "machine", link=0),
        H(120.6, "click", UNLISTED_SCANNER[0], CHROME_WIN, "machine", link=1),
        H(120.9, "click", UNLISTED_SCANNER[0], CHROME_WIN, "machine", link=2)),
        "issue 22: a pixel fetch that comes with a gateway's link burst (same address, within a couple of seconds)"),
    Scenario("gateway from an unlisted network: links then pixel", "machine/burst", 4, (
        H(200, "click", UNLISTED_SCANNER[1], EDGE_WIN, "machine", link=0),
        H(200.2, "click", UNLISTED_SCANNER[1], EDGE_WIN, "machine", link=1),
        H(200.5, "click", UNLISTED_SCANNER[1], EDGE_WIN, "machine", link=3), H(201.5, "open", UNLISTED_SCANNER[1], EDGE_WIN, "machine")),
        "the same, with the images fetched after the links"),
    Scenario("two-link scan without a pixel", "machine/burst", 5, (
        H(300, "click", UNLISTED_SCANNER[2], CHROME_WIN, "machine", link=0),
        H(300.5, "click", UNLISTED_SCANNER[2], CHROME_WIN, "machine", link=4)),
        "issue 22: two-link scans with no pixel fetch before them"),
    Scenario("two-link email, both links in a second", "machine/burst", 2, (
        H(310, "click", UNLISTED_SCANNER[3], CHROME_WIN, "machine", link=0),
        H(310.4, "click", UNLISTED_SCANNER[3], CHROME_WIN, "machine", link=1)), "every link of a two-link email"),
    Scenario("scanner pixel, then two links half a second later", "machine/burst", 6, (
        H(400, "open", "192.0.2.210", CHROME_WIN, "machine"), H(400.5, "click", "192.0.2.210", CHROME_WIN, "machine", link=1),
        H(400.9, "click", "192.0.2.210", CHROME_WIN, "machine", link=5)),
        "a pixel half a second before is part of the scan, not a person reading"),
    Scenario("five links in a second", "machine/burst", 5, tuple(
        H(150 + i * 0.2, "click", "192.0.2.211", CHROME_WIN, "machine", link=i) for i in range(5)), "notes §4: all-links bursts"),
    # ---------------------------------------------------------------- cloud scanners
    Scenario("aws click seconds after delivery, never opened", "machine/cloud", 3, (
        H(45, "click", AWS[0], CHROME_WIN, "machine", link=0),), "issue 22: cloud click with an ordinary browser UA"),
    Scenario("aws pixel and click together", "machine/cloud", 3, (
        H(60, "open", AWS[1], CHROME_WIN, "machine"), H(60.3, "click", AWS[1], CHROME_WIN, "machine", link=2)),
        "a scanner in AWS fetching images and the link at once (Cisco Secure Email Cloud runs in AWS)"),
    Scenario("aws click two minutes after delivery", "machine/cloud", 2, (H(130, "click", AWS[2], EDGE_WIN, "machine", link=1),),
             "anymail#200: scanner bursts 60 s - 5 min after sending"),
    Scenario("aws click four minutes after delivery", "machine/cloud", 2, (H(250, "click", AWS[3], CHROME_WIN, "machine", link=0),),
             "as above"),
    Scenario("azure click, never opened", "machine/cloud", 2, (H(90, "click", AZURE[0], CHROME_WIN, "machine", link=0),),
             "issue 22: Azure scanner"),
    Scenario("azure click with edge UA", "machine/cloud", 3, (H(180, "click", AZURE[2], EDGE_WIN, "machine", link=1),), "as above"),
    Scenario("gcp headless click", "machine/cloud", 2, (H(200, "click", GCP[0], HEADLESS, "machine", link=0),),
             "issue 22: headless browser in a cloud"),
    Scenario("gcp chrome click", "machine/cloud", 2, (H(70, "click", GCP[1], CHROME_WIN, "machine", link=1),), "as above"),
    Scenario("headless from anywhere", "machine/cloud", 2, (H(5000, "click", "192.0.2.220", HEADLESS, "machine", link=0),),
             "crawler-user-agents: HeadlessChrome is automation"),
    Scenario("IE 8 click seconds after sending from azure", "machine/cloud", 2, (H(2, "click", AZURE[1], IE8_WIN7, "machine", link=0),),
             "gophish#1555: IE 8 clicks 1-3 s after sending"),
    # ---------------------------------------------------------------- re-scans
    Scenario("time-of-click re-scan 12 s later", "machine/rescan", 2, (
        H(3000, "open", ISP[20], CHROME_MAC), H(3010, "click", ISP[20], CHROME_MAC, link=0),
        H(3022, "click", RESEND_SCANNER_IP, RESEND_SCANNER, "machine", link=0)),
        "resend-node#901: a second click 12 s later from another network and OS"),
    Scenario("safe links time-of-click check", "machine/rescan", 3, (
        H(4000, "open", CORP[10], OUTLOOK_MSIE), H(4060, "click", CORP[10], EDGE_WIN, link=1),
        H(4063, "click", "40.94.12.1", EDGE_WIN, "machine", link=1)),
        "Safe Links checks at time of click (MicrosoftDocs/microsoft-365-docs PR #12815) from Microsoft's network"),
    Scenario("re-scan 25 s later from a cloud", "machine/rescan", 2, (
        H(6000, "click", ISP[21], CHROME_WIN, link=1), H(6025, "click", "54.160.9.9", CHROME_WIN, "machine", link=1)),
        "a re-scan long after delivery"),
    # ---------------------------------------------------------------- Gmail prefetch
    Scenario("gmail prefetch beside the proxy open", "machine/gmail", 2, (
        H(5, "open", GOOGLE_PROXY2, GMAIL_PREFETCH, "machine"), H(600, "open", GOOGLE_PROXY, GMAIL_PROXY, "proxy")),
        "mautic#10245: Google's old-Edge fetch on delivery; the proxy open later is the person"),
    Scenario("gmail prefetch later, from another google range", "machine/gmail", 2, (
        H(30, "open", GOOGLE_SVC, GMAIL_PREFETCH, "machine"), H(3600, "open", GOOGLE_PROXY, GMAIL_PROXY, "proxy")),
        "ahoy_email#139: the same UA from many Google addresses"),
    Scenario("gmail session prefetch with old chrome", "machine/gmail", 1, (
        H(900, "open", GOOGLE_SVC, SAFELINKS_CHROME57, "machine"),), "issue 22: an old Chrome UA from Google's ranges"),
    # ---------------------------------------------------------------- link previewers
    Scenario("whatsapp preview of a forwarded link", "machine/preview", 2, (H(7200, "click", FB, WHATSAPP, "machine", link=0),),
             "goaccess#808: WhatsApp fetches links pasted in a chat"),
    Scenario("telegram preview", "machine/preview", 2, (H(8000, "click", "149.154.161.1", TELEGRAM, "machine", link=1),),
             "crawler-user-agents: TelegramBot"),
    Scenario("slack unfurl", "machine/preview", 2, (H(8100, "click", AWS[0], SLACK, "machine", link=0),), "crawler-user-agents: Slackbot"),
    Scenario("teams/skype preview", "machine/preview", 2, (H(9000, "click", TEAMS, SKYPE_PREVIEW, "machine", link=0),),
             "yauaa#477: the Teams/Skype URL preview"),
    Scenario("old-IE preview from microsoft's network", "machine/preview", 2, (H(9100, "click", TEAMS, OLD_IE7, "machine", link=1),),
             "issue 22: link previewers without 'bot' (old-IE previews from Microsoft's ranges)"),
    Scenario("bingpreview from outlook.com", "machine/preview", 2, (H(300, "click", BING, BINGPREVIEW, "machine", link=0),),
             "phpList#415: Outlook.com visits links with BingPreview within minutes"),
    # ---------------------------------------------------------------- prefetchers and tools
    Scenario("apple MPP only", "machine/prefetch", 1, (H(30, "open", APPLE, MPP, "machine"),), "notes §4: MPP"),
    Scenario("MPP from private relay egress", "machine/prefetch", 1, (H(35, "open", "104.28.40.17", MPP, "machine"),),
             "notes §4: the bare UA from outside 17/8 (Private Relay)"),
    Scenario("curl click", "machine/tools", 2, (H(4000, "click", "192.0.2.230", "curl/8.5.0", "machine", link=0),), "http_tool"),
    Scenario("python-requests open", "machine/tools", 1, (H(4100, "open", "192.0.2.231", "python-requests/2.32.3", "machine"),),
             "http_tool"),
    Scenario("HEAD on a link", "machine/tools", 2, (H(500, "click", "192.0.2.232", CHROME_WIN, "machine", link=0, method="HEAD"),),
             "notes §4: HEAD requests"),
    Scenario("empty user agent", "machine/tools", 1, (H(700, "open", "192.0.2.233", "", "machine"),), "empty_ua"),
)
