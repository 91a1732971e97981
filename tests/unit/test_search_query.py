"""The pure parts of full-text search: the FTS5 query translation, the document, the language guess."""

from __future__ import annotations

from models.search import fts5_query
from pipeline.stages.search_doc import build_search_doc, guess_language


class TestFts5Query:
    def test_words_are_quoted_and_all_required(self) -> None:
        assert fts5_query("quarterly invoice") == '"quarterly" AND "invoice"'

    def test_phrases_or_negation_and_prefix(self) -> None:
        assert fts5_query('"quarterly invoice" -globex') == '("quarterly invoice") NOT "globex"'
        assert fts5_query("kilimanjaro or hopper") == '("kilimanjaro" OR "hopper")'
        assert fts5_query("invo*") == '"invo"*'

    def test_syntax_characters_cannot_reach_fts5(self) -> None:
        assert fts5_query('NEAR(a b) "unterminated') == '"NEAR a" AND "b" AND "unterminated"'
        assert fts5_query("grace@navy.example") == '"grace navy example"'
        assert fts5_query("'; drop table emails; --") == '"drop" AND "table" AND "emails"'

    def test_nothing_searchable_is_none(self) -> None:
        for q in ("", "   ", '"', "-", "-only -negative", "***", "((("):
            assert fts5_query(q) is None, q


class TestSearchDoc:
    def test_html_text_is_indexed_beside_the_text_part(self) -> None:
        doc = build_search_doc(subject="Hi", names=["Grace Hopper"], addresses=["grace@navy.example"],
                               body_text="plain words", body_html="<p>plain words <b>hidden</b></p>",
                               attachment_names=["Roadmap-Q3.pdf"])
        assert "plain words" in doc.body and "hidden" in doc.body
        assert doc.participants == "Grace Hopper grace@navy.example grace navy.example"
        assert doc.attachments == "Roadmap-Q3.pdf Roadmap Q3 pdf"

    def test_an_html_part_saying_what_the_text_part_says_is_indexed_once(self) -> None:
        text = "Hello Alice,\n\nthe delivery of order 7 is on track. Regards, Pat"
        html = "<html><body><p>Hello Alice,</p><p>the delivery of order 7 is on track.</p><p>Regards, Pat</p></body></html>"
        doc = build_search_doc(subject="Hi", names=[], addresses=[], body_text=text, body_html=html, attachment_names=[])
        assert doc.body == text
        # one token more (a host the text part spells as two words) and the HTML text is indexed too
        doc = build_search_doc(subject="Hi", names=[], addresses=[], body_text="see acme com",
                               body_html="<p>see acme.com</p>", attachment_names=[])
        assert "acme.com" in doc.body and doc.body.startswith("see acme com")

    def test_language_guess(self) -> None:
        assert guess_language("Please find the report attached, and let me know if you have any questions.") == "english"
        assert guess_language("Bitte senden Sie mir die Rechnung, und ich werde sie mit dem Team prüfen.") == "german"
        assert guess_language("Merci pour votre message, nous avons bien reçu les documents de la commande.") == "french"
        assert guess_language("12345 67890") == "simple"


class TestBackfill:
    def test_the_sweep_indexes_mail_stored_before_the_index(self, db: str) -> None:
        """Emails past parse without a search row (stored before migration 0013) get one from the sweep;
        the FTS index made by metadata.create_all (the tests' schema) finds them."""
        from sqlmodel import Session, select

        from models import Document, Email
        from models.db import get_engine
        from models.search import EmailSearch, matches
        from pipeline.flows import search_index
        from tests.harness.flow import make_account, make_org

        org_id, _ = make_org()
        account_id = make_account(org_id)
        with Session(get_engine()) as s:
            old = Email(org_id=org_id, account_id=account_id, dedupe_key="old", subject="Archived", body_text="",
                        body_html="<p>only in html: <b>quokka</b></p>", pipeline_state="done")
            fresh = Email(org_id=org_id, account_id=account_id, dedupe_key="new", pipeline_state="fetched")
            s.add_all([old, fresh])
            s.flush()
            s.add(Document(org_id=org_id, email_id=old.id, part_index=1, document_name="Wombat-plan.pdf", size=3,
                           document_file_mimeType="application/pdf", sha256="0" * 64, storage_key="k"))
            s.commit()
            old_id = old.id
        search_index._state.update(at=None, idle=False)
        with Session(get_engine()) as s:
            from models import utcnow

            assert search_index.sweep_search_backfill(s, utcnow()) == 1  # the fetched one waits for its parse
            s.commit()
            assert [r.email_id for r in s.execute(select(EmailSearch)).scalars()] == [old_id]
            for word in ("quokka", "wombat"):
                found = matches("sqlite", org_id, word)
                assert found is not None
                assert [r.email_id for r in s.execute(select(found.c.email_id))] == [old_id]
