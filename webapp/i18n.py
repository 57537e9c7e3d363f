"""The page's words in Japanese and English, and the switch between them.

Static labels go to the browser through ``gr.I18n`` (it translates them
there). Text the server writes into the page (chat notices, toasts, form
errors) is chosen here from the page's language, which the browser reports.
"""

from __future__ import annotations

from typing import Literal

import gradio as gr

Lang = Literal["ja", "en"]

TEXTS: dict[str, tuple[str, str]] = {
    "heading": ("# LLM-jp チャット", "# LLM-jp Chat"),
    "language": ("表示言語", "Language"),
    # Terms
    "terms_tab": ("利用規約", "Terms"),
    "terms_intro": (
        "## 利用規約\nチャットを使う前に、国立情報学研究所の「LLM-jp-3 172B beta1」利用規約を読み、同意してください。"
        "日本語版が正文です。英語版は参考訳であり、法的効力を持ちません。",
        '## Terms of use\nBefore chatting, read and accept the NII "LLM-jp-3 172B beta1" terms of use. The Japanese'
        " text is authoritative; the English translation is for reference only and has no legal effect.",
    ),
    "terms_source": ("出典と版", "Source and version"),
    "form_heading": (
        "### 同意フォーム\n印(\\*)の付いた項目は必須です。",
        "### Acceptance form\nFields marked \\* are required.",
    ),
    "name": ("氏名 *", "Name *"),
    "email": ("メールアドレス *", "Email *"),
    "affiliation": ("所属 *", "Affiliation *"),
    "purpose": ("利用目的 *", "Intended use *"),
    "agree": ("上記の利用規約に同意します *", "I agree to the terms of use above *"),
    "accept": ("同意する", "Accept"),
    "privacy": ("個人情報の取り扱い", "Privacy notice"),
    "withdraw": ("同意を撤回する…", "Withdraw consent…"),
    "withdraw_confirm": (
        "**同意を撤回しますか?** チャットはすぐにロックされ、撤回したことが監査ログに記録されます。"
        "これまでの同意の記録と連絡先は監査ログから削除されません(改ざん検知のため)。"
        "このブラウザの会話は消えません。",
        "**Withdraw your consent?** The chat locks at once and the withdrawal is recorded in the audit log. "
        "Your earlier acceptance and contact details are not deleted from the audit log (it is tamper-evident). "
        "The conversation in this browser is not deleted.",
    ),
    "withdraw_yes": ("撤回する", "Withdraw"),
    "withdraw_no": ("やめる", "Cancel"),
    "status_initial": ("同意するとチャットタブが使えるようになります。", "Accepting unlocks the Chat tab."),
    "admins": ("管理者", "Administrators"),
    "admin_token": ("管理者トークン", "Admin token"),
    "admin_open": ("管理者として開く", "Open the Admin tab"),
    # Chat
    "chat_locked": ("チャット(要同意)", "Chat (accept first)"),
    "chat_open": ("チャット", "Chat"),
    "conversation": ("会話", "Conversation"),
    "chat_placeholder": (
        "## LLM-jp と話してみましょう\n下の例を選ぶか、メッセージを入力してください。",
        "## Talk to LLM-jp\nPick an example below or type a message.",
    ),
    "message": ("メッセージ", "Message"),
    "message_placeholder": (
        "メッセージを入力(Enter で送信、Shift+Enter で改行)",
        "Type a message (Enter sends, Shift+Enter adds a line)",
    ),
    "send": ("送信", "Send"),
    "stop": ("停止", "Stop"),
    "new_chat": ("新しい会話", "New chat"),
    "model": ("モデル", "Model"),
    "acknowledge": (
        "非営利目的でのみ利用することを確認します",
        "I will use this model for non-commercial purposes only",
    ),
    "sampling": ("生成の設定", "Sampling"),
    "temperature": ("temperature(0 = 貪欲法)", "temperature (0 = greedy)"),
    "temperature_info": (
        "小さいほど確実な語を選びます。0 は常に最も確率の高い語。",
        "Lower picks likelier words; 0 always picks the likeliest.",
    ),
    "top_p_info": (
        "確率の合計が top_p になるまでの語から選びます。",
        "Sample from the smallest set of words whose probability adds up to top_p.",
    ),
    "top_k": ("top_k(0 = 制限なし)", "top_k (0 = off)"),
    "top_k_info": (
        "確率の高い k 語から選びます。モデルカードのコードは transformers の既定値 50 を使います。",
        "Sample from the k likeliest words. The model cards' code uses transformers' default of 50.",
    ),
    "repetition_penalty_info": (
        "既に出た語を出にくくします。1.0 は罰則なし。",
        "Makes words already used less likely; 1.0 means none.",
    ),
    "max_new_tokens_info": (
        "返答の長さの上限(トークン)。モデルカードの例の値は下に示します。",
        "Longest reply, in tokens. The model card's example value is shown below.",
    ),
    "seed": ("seed(空欄 = 毎回ランダム)", "seed (empty = random each time)"),
    "seed_info": ("同じ seed と設定で同じ返答を再現します。", "The same seed and settings reproduce the same reply."),
    "export": ("会話を書き出す", "Export the conversation"),
    "export_json": ("JSON で書き出す", "Export as JSON"),
    "export_md": ("Markdown で書き出す", "Export as Markdown"),
    "export_file": ("書き出したファイル", "Exported file"),
    "feedback": ("返答の評価", "Rate a reply"),
    "feedback_help": (
        "返答の「いいね」「よくないね」を押すと、ここにコメント欄が開きます。",
        "Press Like or Dislike on a reply to open a comment box here.",
    ),
    "feedback_comment": ("コメント(任意)", "Comment (optional)"),
    "feedback_share": (
        "この会話を評価と一緒に保存することを許可します",
        "Allow storing this conversation with my rating",
    ),
    "feedback_send": ("評価を送る", "Send rating"),
    "continue": ("続ける", "Continue"),
    # Admin
    "admin_tab": ("管理", "Admin"),
    "audit_log": ("## 監査ログ", "## Audit log"),
    "refresh": ("更新", "Refresh"),
    "per_day": ("同意数(日別、UTC)", "Acceptances per day (UTC)"),
    "latest_events": ("最新のイベント", "Latest events"),
    "access_report": ("アクセスレポート (CSV)", "Access report (CSV)"),
    "feedback_counts": ("返答の評価(モデル別)", "Ratings of replies (per model)"),
    "feedback_export": ("評価の書き出し (CSV)", "Ratings export (CSV)"),
    # Server-written text
    "generating": ("生成中…", "Generating…"),
    "stopped": ("■ 停止しました", "■ Stopped"),
    "cut": ("✂ 上限で打ち切り", "✂ Cut off at the limit"),
    "shared": ("✂ 順番待ちの方のため区切り", "✂ Paused for visitors waiting"),
    "tokens": ("トークン", "tokens"),
    "tok_s": ("トークン/秒", "tokens/s"),
    "busy": (
        "返答の生成中です。停止するか、終わるまでお待ちください。",
        "A reply is being written. Stop it or wait for it to finish.",
    ),
    "continue_prompt": ("続きを書いてください。", "Please continue."),
    "error_title": ("エラー", "Error"),
    "notice_title": ("お知らせ", "Notice"),
    "licence_acknowledged": ("{licence} の条件を確認しました。", "Acknowledged: {licence}."),
    "feedback_thanks": ("評価を記録しました。ありがとうございます。", "Your rating is recorded. Thank you."),
    "feedback_none": ("評価できる返答がまだありません。", "There is no reply to rate yet."),
    "nothing_to_export": ("書き出す会話がまだありません。", "There is no conversation to export yet."),
    "accepted": (
        "利用規約への同意を記録しました。チャットを利用できます。",
        "Your acceptance is recorded; the chat is unlocked.",
    ),
    "withdrawn": ("同意を撤回しました。チャットはロックされました。", "Consent withdrawn; the chat is locked."),
    "field_required": ("入力してください。", "Required."),
    "field_email": ("正しいメールアドレスを入力してください。", "Enter a valid email address."),
    "field_invalid": ("制御文字を含めず、長すぎない値にしてください。", "No control characters, and not too long."),
    "field_agree": ("同意する場合はチェックしてください。", "Tick this to agree."),
    "card_value": ("モデルカードの値", "model card's value"),
    "rated_up": ("高評価", "Liked"),
    "rated_down": ("低評価", "Disliked"),
    # Gradio's own names of a pressed like or dislike button, which it gives in English only.
    "liked_button": ("高評価しました", "Liked"),
    "disliked_button": ("低評価しました", "Disliked"),
    # Past conversations (kept in this browser) and versions
    "history_heading": ("### 会話の履歴", "### Conversations"),
    "history_search": ("会話を検索", "Search conversations"),
    "history_manage": ("この会話を管理", "Manage this conversation"),
    "history_title": ("会話の名前", "Name"),
    "history_rename": ("名前を変更", "Rename"),
    "history_delete": ("この会話を削除", "Delete this conversation"),
    "history_delete_all": ("すべての会話を削除…", "Delete all conversations…"),
    "history_delete_all_confirm": (
        "**このブラウザに保存したすべての会話を削除しますか?**(サーバーにも保存している場合はそちらからも)元に戻せません。",
        "**Delete every conversation kept in this browser?** (And on the server, if they are kept there too.)"
        " This cannot be undone.",
    ),
    "history_delete_all_yes": ("すべて削除する", "Delete all"),
    "history_where": (
        "会話はこのブラウザの中に保存され、サーバーには保存されません"
        "(Hugging Face でサインインして「サーバーに保存」をオンにした場合を除く)。",
        "Conversations are kept in this browser, not on the server"
        ' (unless you sign in with Hugging Face and turn on "Keep on the server").',
    ),
    "history_server": ("サーバーに保存して他の端末でも使う", "Keep on the server and use on my other devices"),
    "history_server_info": (
        "あなたのアカウントで会話をサーバーに保存します。オフにするとサーバー上のコピーを削除します"
        "(このブラウザの会話は残ります)。",
        "Keeps your conversations on the server under your account. Turning it off deletes the server's copy"
        " (this browser keeps its own).",
    ),
    "history_server_on": (
        "会話をサーバーにも保存しました。同じアカウントでサインインした他の端末でも表示されます。",
        "Your conversations are now kept on the server too, and show on your other devices signed in to this account.",
    ),
    "history_server_off": (
        "サーバー上の会話のコピーを削除しました。このブラウザの会話は残っています。",
        "The server's copy of your conversations was deleted. This browser keeps its own.",
    ),
    "history_none_open": ("開いている保存済みの会話がありません。", "No kept conversation is open."),
    "history_deleted_all": ("すべての会話を削除しました。", "Every conversation was deleted."),
    "history_dropped": (
        "保存できる量を超えたため、古い会話を {n} 件削除しました。",
        "{n} older conversations were removed to stay within what this browser keeps.",
    ),
    "compare": ("比較(2 つのモデルに同じメッセージ)", "Compare (two models, one message)"),
    "compare_help": (
        "2 つのモデルが同じメッセージに同時に答えます。良い方に投票してください。"
        "「ランダム」ではモデル名は投票の後に表示されます。生成の設定は上の「生成の設定」を使います。",
        'Two models answer the same message at once. Vote for the better reply. With "random" the models'
        " are named only after your vote. Sampling comes from the Sampling panel above.",
    ),
    "compare_model_a": ("モデル A", "Model A"),
    "compare_model_b": ("モデル B", "Model B"),
    "compare_blind": ("ランダムに選ぶ(投票後に名前を表示)", "Draw at random (named after the vote)"),
    "compare_send": ("両方に送る", "Send to both"),
    "compare_vote_a": ("A が良い", "A is better"),
    "compare_vote_b": ("B が良い", "B is better"),
    "compare_vote_tie": ("引き分け", "Tie"),
    "compare_vote_both_bad": ("どちらも悪い", "Both are bad"),
    "compare_share": (
        "この会話を投票と一緒に保存することを許可します",
        "Allow storing this conversation with my vote",
    ),
    "compare_vote_now": (
        "両方の返答が揃いました。良い方に投票してください。",
        "Both replies are in: vote for the better one.",
    ),
    "compare_stopped": ("■ 停止しました。", "■ Stopped."),
    "compare_stopped_vote": (
        "■ 停止しました。ここまでの返答で投票することもできます。",
        "■ Stopped. You may still vote on the replies as far as they got.",
    ),
    "compare_nothing": ("投票できる比較がまだありません。", "There is no comparison to vote on yet."),
    "compare_thanks": (
        "投票を記録しました。A は {a}、B は {b} でした。",
        "Your vote is recorded. A was {a}, B was {b}.",
    ),
    "arena_ranking": ("比較の順位(Bradley-Terry、95% 信頼区間)", "Compare ranking (Bradley-Terry, 95% intervals)"),
    "versions": ("版", "Versions"),
    "version_prev": ("前の版", "Previous version"),
    "version_next": ("次の版", "Next version"),
    "history_too_big": (
        "この会話は大きすぎるため、ブラウザに保存できません。",
        "This conversation is too large to keep in the browser.",
    ),
}

# Gradio's own words that its Japanese dictionary lacks.
_GRADIO_JA = {
    "common.complete": "完了",
    "chatbot.copy_message": "メッセージをコピー",
    "chatbot.copied_message": "コピーしました",
    "chatbot.complete": "完了",
}

I18N = gr.I18n(ja={k: v[0] for k, v in TEXTS.items()} | _GRADIO_JA, en={k: v[1] for k, v in TEXTS.items()})


def t(key: str) -> gr.i18n.I18nData:
    """A static label, translated in the browser."""
    if key not in TEXTS:
        raise KeyError(key)
    return I18N(key)


def lang_of(value: str | None) -> Lang:
    """The page language reported by the browser; Japanese unless it says English."""
    return "en" if isinstance(value, str) and value.lower().startswith("en") else "ja"


def say(lang: str | None, key: str) -> str:
    """Server-written text in the page's language."""
    ja, en = TEXTS[key]
    return en if lang_of(lang) == "en" else ja


def pick(lang: str | None, ja: str, en: str) -> str:
    return en if lang_of(lang) == "en" else ja


# The browser decides the language: the visitor's choice (kept in localStorage),
# else the browser's own. Gradio reads ``navigator.language`` once at start-up,
# so a saved choice is applied before it runs; a switch then calls Gradio's own
# ``changeLocale`` (the module Gradio itself loaded), reloading only if it is
# not found. The same script keeps the Enter that confirms an IME conversion
# from sending the message: Gradio's textbox sends on any Enter keypress.
HEAD = r"""
<script>
(() => {
  const KEY = "llmjp-lang";
  const saved = localStorage.getItem(KEY);
  if (saved === "ja" || saved === "en") {
    Object.defineProperty(navigator, "language", { get: () => saved, configurable: true });
    Object.defineProperty(navigator, "languages", { get: () => [saved], configurable: true });
  }
  // Japanese for a Japanese browser, English otherwise (Gradio falls back to English too).
  window.llmjpLang = () => ((localStorage.getItem(KEY) || navigator.language || "en").toLowerCase().startsWith("ja") ? "ja" : "en");
  const gradioLocale = async () => {
    const core = performance.getEntriesByType("resource").map((e) => e.name)
      .find((n) => /\/assets\/core-[^/]*\.js$/.test(n));
    try {
      const mod = core && (await import(core));
      return mod && typeof mod.changeLocale === "function" ? mod.changeLocale : null;
    } catch (err) { console.warn("language switch", err); return null; }
  };
  window.llmjpSetLang = async (lang) => {
    localStorage.setItem(KEY, lang);
    document.documentElement.lang = lang;
    const change = await gradioLocale();
    if (change) change(lang); else location.reload();
    return lang;
  };
  // On arrival: Gradio picked the browser's language; a choice made here before wins.
  window.llmjpInit = async () => {
    const lang = window.llmjpLang();
    if (localStorage.getItem(KEY)) {
      const change = await gradioLocale();
      if (change) change(lang);
      document.documentElement.lang = lang;
    }
    return lang;
  };
  // Gradio's textbox sends on the Enter keypress. While an IME composes, the
  // Enter that confirms the conversion belongs to the IME: keep it from Gradio.
  // The decision is made once per key press, on its keydown, and its keypress follows it, so a
  // later Enter is judged on its own however quickly it comes.
  let composing = false, endedAt = -Infinity, imeKey = false;
  document.addEventListener("compositionstart", () => { composing = true; }, true);
  document.addEventListener("compositionend", (e) => { composing = false; endedAt = e.timeStamp; }, true);
  const guard = (e) => {
    if (!(e.target instanceof Element) || !e.target.closest("#chat-message")) return;
    if (e.type === "keydown") {
      // Safari ends the composition just before the confirming key's keydown: the first key after
      // a composition's end, within a few milliseconds, is still the IME's.
      imeKey = e.isComposing || e.keyCode === 229 || composing
        || (e.key === "Enter" && e.timeStamp - endedAt < 30);
      endedAt = -Infinity;
    }
    if (e.key !== "Enter" && e.keyCode !== 229) return;
    if (imeKey || composing) e.stopImmediatePropagation();  // the IME still gets the key; Gradio does not
  };
  document.addEventListener("keyup", (e) => { if (e.key === "Enter") imeKey = false; }, true);
  document.addEventListener("keydown", guard, true);
  document.addEventListener("keypress", guard, true);
})();
</script>
"""
