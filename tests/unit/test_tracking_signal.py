"""Unit tests for the tracking signal (issue 22): range files and the range table, the crawler list,
the shipped data, the per-hit rules with data, the sequence rules, and ``mailpipe tracking update-ranges``.

User agents and addresses are real ones; where each comes from is said beside it (issue threads
by repository and number; addresses by the shipped data file that contains them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.flows.tracking_signals import RANGE_FILES, reset_signals, signals
from pipeline.stages.hit_classify import Signals, Verdict, classify_click, classify_open
from pipeline.stages.hit_sequence import Hit, judge
from pipeline.stages.netranges import RangeTable, parse_provider, parse_range_file, render_range_file, same_network
from pipeline.stages.ua_lists import UserAgentMatcher, parse_crawler_json, parse_ua_file, render_ua_file

DATA = Path(__file__).resolve().parents[2] / "pipeline" / "data" / "tracking"

# User agents (sources beside each).
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
SAFELINKS = "Mozilla/5.0 (Windows NT 6.1) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/57.0.2987.133 Safari/537.36"  # gophish#973
GMAIL_PREFETCH = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/42.0.2311.135 "
                  "Safari/537.36 Edge/12.246 Mozilla/5.0")  # mautic/mautic#10245, ankane/ahoy_email#139
GMAIL_PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"  # gophish#1390
OUTLOOK_MSIE = ("Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 10.0; WOW64; Trident/7.0; .NET4.0C; .NET4.0E; .NET CLR 2.0.50727; "
                ".NET CLR 3.0.30729; .NET CLR 3.5.30729; Microsoft Outlook 16.0.5257; ms-office; MSOffice 16)")  # httpagentparser#91
OUTLOOK_16 = "Microsoft Office/16.0 (Microsoft Outlook 16.0.8241; Pro)"  # browscap#1634
MSOFFICE = "Mozilla/4.0 (compatible; ms-office; MSOffice 16)"  # browscap#2795
WHATSAPP = "WhatsApp/2.17.190 A"  # allinurl/goaccess#808
SKYPE = "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5 skype-url-preview@microsoft.com"  # nielsbasjes/yauaa#477
BINGPREVIEW = "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/534+ (KHTML, like Gecko) BingPreview/1.0b"  # phpList#415
HEADLESS = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/74.0.3729.169 "
            "Safari/537.36")  # crawler-user-agents instances
OLD_IE7 = "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.1; Trident/7.0)"  # issue 22; IE 7 form of browscap#666 without Office's tokens
APPLE_MAIL = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"


@pytest.fixture(scope="module")
def shipped() -> Signals:
    reset_signals()
    return signals()


class TestRangeFiles:
    def test_header_labels_and_notes(self) -> None:
        rf = parse_range_file("# origin: https://example.test/x.json\n# label: cloud:aws\n# | a note: kept\n"
                              "3.0.0.0/15\n64.235.144.0/20 gateway:barracuda\n\n2600:1f00::/24\n")
        assert rf.meta == {"origin": "https://example.test/x.json", "label": "cloud:aws"}
        assert rf.notes == ("| a note: kept",)
        assert [(str(n), label) for n, label in rf.entries] == [
            ("3.0.0.0/15", "cloud:aws"), ("64.235.144.0/20", "gateway:barracuda"), ("2600:1f00::/24", "cloud:aws")]

    def test_malformed_lines_are_refused_with_their_number(self) -> None:
        with pytest.raises(ValueError, match="line 2"):
            parse_range_file("# label: x\nnot-a-prefix\n")
        with pytest.raises(ValueError, match="no label"):
            parse_range_file("10.0.0.0/8\n")

    def test_render_round_trips_and_sorts(self) -> None:
        rf = parse_range_file("# label: google\n74.125.0.0/16\n8.8.8.0/24\n2001:4860::/32\n8.8.8.0/24\n66.102.0.0/20 other\n")
        text = render_range_file(rf.meta, rf.entries, ["from goog.json"])
        assert text.splitlines()[:3] == ["# label: google", "# | from goog.json", "8.8.8.0/24"]
        assert "66.102.0.0/20 other" in text and text.count("8.8.8.0/24") == 1
        assert set(parse_range_file(text).entries) == set(rf.entries)


class TestRangeTable:
    def test_longest_prefix_buckets_return_every_covering_label(self) -> None:
        table = RangeTable.build([parse_range_file("# label: cloud:microsoft\n40.64.0.0/10\n52.96.0.0/12\n"),
                                  parse_range_file("# label: gateway:microsoft_eop\n40.107.0.0/16\n2a01:111:f403::/48\n")])
        assert table.labels("40.107.218.12") == {"cloud:microsoft", "gateway:microsoft_eop"}  # gophish#973's Safe Links address
        assert table.labels("40.64.1.1") == {"cloud:microsoft"}
        assert table.labels("::ffff:40.107.218.12") == {"cloud:microsoft", "gateway:microsoft_eop"}
        assert table.labels("2a01:111:f403:c10::5") == {"gateway:microsoft_eop"}
        assert table.labels("198.51.100.7") == frozenset()
        assert table.labels("not an address") == frozenset() and table.labels(None) == frozenset()

    def test_same_network(self) -> None:
        assert same_network("198.51.100.7", "198.51.100.200")
        assert not same_network("198.51.100.7", "198.51.101.7")
        assert same_network("2001:db8:1:2::1", "2001:db8:1:ffff::9")
        assert not same_network("2001:db8:1::1", "2001:db8:2::1")
        assert not same_network("198.51.100.7", None) and not same_network("198.51.100.7", "2001:db8::1")


class TestProviderFormats:
    def test_aws_ip_ranges_json(self) -> None:
        raw = json.dumps({"syncToken": "1", "prefixes": [{"ip_prefix": "3.5.140.0/22", "region": "ap-northeast-2", "service": "AMAZON"}],
                          "ipv6_prefixes": [{"ipv6_prefix": "2600:1f14::/35", "service": "EC2"}]}).encode()
        fmt, nets, _ = parse_provider(raw, "cloud:aws")
        assert fmt == "aws-ip-ranges" and [str(n) for n, _ in nets] == ["3.5.140.0/22", "2600:1f14::/35"]

    def test_google_cloud_json(self) -> None:
        raw = json.dumps({"syncToken": "1", "prefixes": [{"ipv4Prefix": "34.80.0.0/15", "service": "Google Cloud"},
                                                          {"ipv6Prefix": "2600:1900:4030::/44"}]}).encode()
        fmt, nets, _ = parse_provider(raw, "cloud:gcp")
        assert fmt == "google-ipranges" and {label for _, label in nets} == {"cloud:gcp"} and len(nets) == 2

    def test_azure_service_tags_with_a_tag_filter(self) -> None:
        raw = json.dumps({"changeNumber": 1, "values": [
            {"name": "AzureCloud", "properties": {"addressPrefixes": ["20.0.0.0/11", "2603:1000::/24"]}},
            {"name": "AzureFrontDoor.Frontend", "properties": {"addressPrefixes": ["13.107.246.0/24"]}}]}).encode()
        assert len(parse_provider(raw, "cloud:microsoft")[1]) == 3
        fmt, nets, _ = parse_provider(raw, "cloud:microsoft", services=frozenset({"AzureCloud"}))
        assert fmt == "azure-service-tags" and [str(n) for n, _ in nets] == ["20.0.0.0/11", "2603:1000::/24"]

    def test_microsoft_365_endpoints_by_area_or_id(self) -> None:
        raw = json.dumps([{"id": 9, "serviceArea": "Exchange", "ips": ["40.92.0.0/15", "2a01:111:f403::/48"]},
                          {"id": 11, "serviceArea": "Skype", "ips": ["52.112.0.0/14"]}, {"id": 3, "serviceArea": "Exchange"}]).encode()
        fmt, nets, _ = parse_provider(raw, "gateway:microsoft_exchange", services=frozenset({"Exchange"}))
        assert fmt == "m365-endpoints" and [str(n) for n, _ in nets] == ["40.92.0.0/15", "2a01:111:f403::/48"]
        assert [str(n) for n, _ in parse_provider(raw, "x", services=frozenset({"11"}))[1]] == ["52.112.0.0/14"]

    def test_plain_lists_keep_their_comments_as_notes(self) -> None:
        fmt, nets, notes = parse_provider(b"# Mimecast: _netblocks.mimecast.com\n205.139.110.0/24 gateway:mimecast\n", "gateway:other")
        assert fmt == "range-list" and notes == ("Mimecast: _netblocks.mimecast.com",) and nets[0][1] == "gateway:mimecast"

    def test_unknown_json_is_refused(self) -> None:
        with pytest.raises(ValueError, match="unrecognised"):
            parse_provider(b'{"hello": 1}', "x")


class TestCrawlerList:
    ENTRIES = [("search-engine", r"Googlebot\/"), ("social-preview", "WhatsApp"), ("http-library", "^curl"),
               ("social-preview", "GoogleImageProxy"), ("-", "unbalanced(")]

    def test_classes_from_tags(self) -> None:
        m = UserAgentMatcher(self.ENTRIES)
        assert m.match("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)") == "bot_ua"
        assert m.match(WHATSAPP) == "link_preview"
        assert m.match("curl/8.5.0") == "http_tool"
        assert m.match(CHROME) is None

    def test_gmail_proxy_is_not_a_crawler_and_bad_patterns_are_skipped(self) -> None:
        m = UserAgentMatcher(self.ENTRIES)
        assert m.match(GMAIL_PROXY) is None
        assert m.skipped == 1 and m.size == 3

    def test_json_and_line_format(self) -> None:
        raw = json.dumps([{"pattern": "WhatsApp", "tags": ["social-preview"], "instances": []},
                          {"pattern": "Slackbot", "instances": []}, {"pattern": "bad\tpattern"}]).encode()
        entries = parse_crawler_json(raw)
        assert entries == [("social-preview", "WhatsApp"), ("-", "Slackbot")]
        meta, back = parse_ua_file(render_ua_file({"origin": "crawler-user-agents 1.67.0"}, entries))
        assert meta == {"origin": "crawler-user-agents 1.67.0"} and back == entries


class TestShippedData:
    def test_every_file_says_where_and_when_it_came_from(self) -> None:
        for name in [df.name for df in RANGE_FILES] + ["crawlers"]:
            head = (DATA / f"{name}.txt").read_text().splitlines()[:12]
            assert any(line.startswith("# origin: ") for line in head), name
            assert any(line.startswith("# retrieved: 20") for line in head), name
            assert any(line.startswith("# sha256: ") for line in head), name

    def test_real_addresses_carry_their_labels(self, shipped: Signals) -> None:
        r = shipped.ranges
        assert "gateway:microsoft_eop" in r.labels("40.107.218.12")  # microsoft365.txt; gophish#973
        assert "gateway:barracuda" in r.labels("64.235.150.10")  # gateways.txt, 64.235.144.0/20
        assert "gateway:mimecast" in r.labels("205.139.110.20")  # gateways.txt
        assert "gateway:proofpoint" in r.labels("148.163.130.5")  # gateways.txt
        assert "cloud:aws" in r.labels("52.20.1.2") and "cloud:aws" in r.labels("3.80.10.20")  # aws.txt
        assert "cloud:microsoft" in r.labels("20.50.1.10")  # azure.txt
        assert {"cloud:gcp", "google"} <= r.labels("34.68.1.1")  # gcp.txt and google.txt
        assert r.labels("66.102.8.20") == {"google"}  # google.txt: Gmail's proxy network, not Google Cloud
        assert "apple" in r.labels("17.58.63.9")
        assert "preview:microsoft_teams" in r.labels("52.112.5.5")
        assert r.labels("198.51.100.7") == frozenset() and r.labels("203.0.113.9") == frozenset()

    @pytest.mark.parametrize("ua", [
        CHROME, APPLE_MAIL, OUTLOOK_MSIE, OUTLOOK_16, MSOFFICE, GMAIL_PREFETCH,
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Thunderbird/128.3.0",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
        "Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36"])
    def test_the_crawler_list_matches_no_mail_client_or_browser(self, shipped: Signals, ua: str) -> None:
        assert shipped.agents.match(ua) is None

    def test_the_crawler_list_knows_the_previewers(self, shipped: Signals) -> None:
        for ua in (WHATSAPP, SKYPE, BINGPREVIEW, "TelegramBot (like TwitterBot)", "facebookexternalhit/1.1"):
            assert shipped.agents.match(ua) == "link_preview", ua


class TestRulesWithData:
    def test_security_gateway_by_network(self, shipped: Signals) -> None:
        """gophish#973: Safe Links from 40.107.218.12 (EOP) with a Chrome 57 UA; Barracuda's network with any UA."""
        assert classify_click(SAFELINKS, "40.107.218.12", 20.0, signals=shipped) == Verdict(True, "security_gateway")
        assert classify_open(CHROME, "40.92.5.5", seconds_after_send=15.0, signals=shipped) == Verdict(True, "security_gateway")
        assert classify_open(CHROME, "64.235.150.10", seconds_after_send=600.0, signals=shipped) == Verdict(True, "security_gateway")
        assert classify_click(CHROME, "205.139.110.20", 60.0, signals=shipped) == Verdict(True, "security_gateway")

    def test_link_previews(self, shipped: Signals) -> None:
        assert classify_click(WHATSAPP, "31.13.66.1", 7200.0, signals=shipped) == Verdict(True, "link_preview")
        assert classify_click(SKYPE, "52.112.5.5", 9000.0, signals=shipped) == Verdict(True, "link_preview")
        assert classify_click(OLD_IE7, "52.112.5.5", 9100.0, signals=shipped) == Verdict(True, "link_preview")
        assert classify_click(BINGPREVIEW, "157.55.39.76", 300.0, signals=shipped) == Verdict(True, "link_preview")

    def test_outlook_word_engine_ua_is_a_person_even_in_azure(self, shipped: Signals) -> None:
        """Outlook's image fetch says MSIE 7.0 with ms-office (httpagentparser#91): a person, also on a cloud desktop."""
        assert classify_open(OUTLOOK_MSIE, "20.50.1.10", seconds_after_send=120.0, signals=shipped) == Verdict(False, None)
        assert classify_open(OUTLOOK_MSIE, "192.0.2.50", seconds_after_send=600.0, signals=shipped) == Verdict(False, None)
        assert classify_click(OLD_IE7, "192.0.2.50", 600.0, signals=shipped) == Verdict(False, None), "old IE outside Microsoft"

    def test_gmail_prefetch_beside_the_proxy(self, shipped: Signals) -> None:
        """mautic#10245: Google's old-Edge fetch from Google's ranges; the proxy's open is still counted."""
        assert classify_open(GMAIL_PREFETCH, "66.249.84.10", seconds_after_send=5.0, signals=shipped) == Verdict(True, "gmail_prefetch")
        assert classify_open(SAFELINKS, "74.125.210.5", seconds_after_send=900.0, signals=shipped) == Verdict(True, "gmail_prefetch")
        assert classify_open(GMAIL_PROXY, "66.102.8.20", seconds_after_send=600.0, signals=shipped) == Verdict(True, "gmail_proxy", True)
        assert classify_open(CHROME, "34.68.1.1", seconds_after_send=400.0, signals=shipped) == Verdict(False, None), "Google Cloud"

    def test_headless_in_a_cloud_is_a_cloud_scanner(self, shipped: Signals) -> None:
        assert classify_click(HEADLESS, "35.196.1.1", 200.0, signals=shipped) == Verdict(True, "cloud_scanner")
        assert classify_click(HEADLESS, "192.0.2.220", 5000.0, signals=shipped) == Verdict(True, "bot_ua")
        assert classify_click(CHROME, "52.20.1.2", 45.0, signals=shipped) == Verdict(False, None), "judged against history"

    def test_apple_mpp_still_flagged(self, shipped: Signals) -> None:
        assert classify_open("Mozilla/5.0", "17.58.63.9", signals=shipped) == Verdict(True, "apple_mpp")
        assert classify_open(APPLE_MAIL, "17.58.101.4", signals=shipped) == Verdict(False, None)


def _h(hid: str, kind: str, at: float, ip: str, *, link: str | None = None, labels: frozenset[str] = frozenset(),
       machine: bool = False, proxied: bool = False) -> Hit:
    return Hit(hid, kind, at, ip, labels, link, machine, at, proxied)


AWS = frozenset({"cloud:aws"})


class TestSequenceRules:
    def test_all_links_burst_and_its_companion_pixel(self) -> None:
        hits = [_h("o", "open", 120.0, "192.0.2.200"), *(_h(f"c{i}", "click", 120.4 + i * 0.2, "192.0.2.200", link=f"l{i}")
                                                         for i in range(3))]
        assert judge(hits, 3) == {"c0": "link_burst", "c1": "link_burst", "c2": "link_burst", "o": "security_gateway"}

    def test_two_link_scan_without_a_pixel_but_not_after_an_open(self) -> None:
        scan = [_h("a", "click", 300.0, "192.0.2.201", link="l0"), _h("b", "click", 300.5, "192.0.2.201", link="l4")]
        assert judge(scan, 5) == {"a": "link_burst", "b": "link_burst"}
        person = [_h("o", "open", 3000.0, "66.102.8.20", proxied=True, machine=True), _h("a", "click", 3100.0, "203.0.113.3", link="l0"),
                  _h("b", "click", 3100.6, "203.0.113.3", link="l3")]
        assert judge(person, 5) == {}, "a person (Gmail: the open came through the proxy) ctrl-clicking two links"

    def test_cloud_click_without_an_open_but_not_a_cloud_desktop(self) -> None:
        assert judge([_h("c", "click", 45.0, "52.20.1.2", link="l0", labels=AWS)], 3) == {"c": "cloud_scanner"}
        desktop = [_h("o", "open", 300.0, "3.80.10.20", labels=AWS), _h("c", "click", 340.0, "3.80.10.20", link="l2", labels=AWS)]
        assert judge(desktop, 3) == {}
        late = [_h("c", "click", 3600.0, "52.20.1.2", link="l0", labels=AWS)]
        assert judge(late, 3) == {}, "long after delivery"
        together = [_h("o", "open", 60.0, "3.101.5.6", labels=AWS), _h("c", "click", 60.3, "3.101.5.6", link="l0", labels=AWS)]
        assert judge(together, 3) == {"c": "cloud_scanner", "o": "security_gateway"}

    def test_rescan_from_another_network(self) -> None:
        """resend-node#901: a second click 12 s later from another network."""
        hits = [_h("p", "click", 3010.0, "198.51.100.20", link="l0"), _h("r", "click", 3022.0, "168.90.91.133", link="l0")]
        assert judge(hits, 2) == {"r": "rescan"}
        same_net = [_h("p", "click", 3010.0, "198.51.100.20", link="l0"), _h("q", "click", 3025.0, "198.51.100.21", link="l0")]
        assert judge(same_net, 2) == {}
        later = [_h("p", "click", 650.0, "198.51.100.11", link="l0"), _h("q", "click", 7050.0, "198.51.100.212", link="l0")]
        assert judge(later, 2) == {}, "two people hours apart"


class TestUpdateCommand:
    def _run(self, *args: str) -> tuple[int, str]:
        from ops.cli import main

        result = CliRunner().invoke(main, ["tracking", "update-ranges", *args])
        return result.exit_code, result.output

    def test_writes_files_with_provenance_and_the_loader_uses_them(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        src = tmp_path / "ip-ranges.json"
        src.write_text(json.dumps({"prefixes": [{"ip_prefix": "198.51.100.0/24"}], "ipv6_prefixes": []}))
        out = tmp_path / "data"
        code, output = self._run(f"aws={src}", "--origin", "aws=https://ip-ranges.amazonaws.com/ip-ranges.json", "--out", str(out))
        assert code == 0, output
        assert "aws: 1 entries (aws-ip-ranges)" in output
        text = (out / "aws.txt").read_text()
        assert "# origin: https://ip-ranges.amazonaws.com/ip-ranges.json" in text and "# retrieved: " in text
        assert text.rstrip().endswith("198.51.100.0/24")
        monkeypatch.setenv("MAILPIPE_TRACKING_DATA_DIR", str(out))
        from ops.settings import reset_settings

        reset_settings()
        reset_signals()
        try:
            assert signals().ranges.labels("198.51.100.7") == {"cloud:aws"}, "the operator's file replaces the shipped aws.txt"
            assert "gateway:microsoft_eop" in signals().ranges.labels("40.107.218.12"), "the other files are still the shipped ones"
        finally:
            monkeypatch.delenv("MAILPIPE_TRACKING_DATA_DIR")
            reset_settings()
            reset_signals()

    def test_nothing_is_written_when_a_source_fails(self, tmp_path: Path) -> None:
        good = tmp_path / "good.txt"
        good.write_text("17.0.0.0/8\n")
        empty = tmp_path / "empty.json"
        empty.write_text(json.dumps({"prefixes": []}))
        out = tmp_path / "data"
        code, output = self._run(f"apple={good}", f"google={empty}", "--out", str(out))
        assert code != 0 and "nothing was written" in output
        assert not out.exists() or list(out.iterdir()) == []
        code, output = self._run(f"apple={tmp_path / 'missing.txt'}", "--out", str(out))
        assert code != 0 and "nothing was written" in output

    def test_unknown_names_are_refused(self, tmp_path: Path) -> None:
        code, output = self._run(f"yahoo={tmp_path}", "--out", str(tmp_path))
        assert code != 0 and "unknown: yahoo" in output
