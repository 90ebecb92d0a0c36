// The validating nginx peer (NJS=1 in run.sh): what a team could build with nginx and njs instead
// of the gateway. It checks the update-contact PATCH against the same contract as the gateway
// (tests/data/shared/contract/openapi.yaml), in the gateway's stage order (gateway.md §2):
// Authorization, X-Session-Token, Content-Type, then path and body. A request that breaks it gets
// the gateway's status and an RFC 9457 problem; a valid one is proxied (internalRedirect to
// @upstream, with the body already read). It does not check sessions (no cache, no JWT claims).
// Before it is timed, run.sh checks that it gives the gateway's verdict on every case of
// verdicts.py.

var B64TOKEN = /^[A-Za-z0-9\-._~+\/]+=*$/;
var VISIBLE = /^[\x21-\x7e]+$/;
var INT64 = /^-?(0|[1-9][0-9]*)$/;
var TCHAR = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
var ATEXT = /^[A-Za-z0-9!#$%&'*+\-\/=?^_`{|}~]+$/;
var LABEL = /^[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?$/;
var INT64_MAX = '9223372036854775807';
var QUOTED_LOCAL = /^"([\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$/;
var ROUTE = /^\/companies\/v2\/rs\/([^\/]*)\/contacts\/([^\/]*)$/;
// Regular expressions live here, compiled once: njs compiles a literal each time it is evaluated.

function problem(r, status, slug, title, errors, extraHeaders) {
    var p = { type: 'https://companies-gateway.dev/problems/' + slug, title: title, status: status };
    if (errors) { p.errors = errors; }
    r.headersOut['Content-Type'] = 'application/problem+json';
    if (extraHeaders) { for (var k in extraHeaders) { r.headersOut[k] = extraHeaders[k]; } }
    r.return(status, JSON.stringify(p));
}

// The raw values of the three checked headers, in one pass (r.headersIn folds repeats).
function checkedHeaders(r) {
    var h = { authorization: [], 'x-session-token': [], 'content-type': [] };
    var raw = r.rawHeadersIn;
    for (var i = 0; i < raw.length; i++) {
        var list = h[raw[i][0].toLowerCase()];
        if (list) { list.push(raw[i][1]); }
    }
    return h;
}

function exactlyOne(vals, label) {
    if (vals.length === 0) { return { header: label, code: 'missing' }; }
    if (vals.length > 1) { return { header: label, code: 'repeated' }; }
    return null;
}

function checkAuthorization(h) {
    var v = h.authorization;
    var e = exactlyOne(v, 'Authorization');
    if (e) { return e; }
    var s = v[0];
    if (s.length < 6 || s.substring(0, 6).toLowerCase() !== 'bearer') { return { header: 'Authorization', code: 'malformed' }; }
    var rest = s.substring(6);
    var i = 0;
    while (i < rest.length && rest.charAt(i) === ' ') { i++; }
    var token = rest.substring(i);
    if (i === 0 || token.length === 0 || !B64TOKEN.test(token)) { return { header: 'Authorization', code: 'malformed' }; }
    return null;
}

function checkSessionToken(h) {
    var v = h['x-session-token'];
    var e = exactlyOne(v, 'X-Session-Token');
    if (e) { return e; }
    if (v[0].length === 0 || v[0].length > 4096 || !VISIBLE.test(v[0])) { return { header: 'X-Session-Token', code: 'malformed' }; }
    return null;
}

// application/json in any case, RFC 9110 parameters, a charset other than utf-8 refused.
function checkContentType(h) {
    var v = h['content-type'];
    if (v.length === 0) { return { header: 'Content-Type', code: 'missing' }; }
    for (var i = 1; i < v.length; i++) { if (v[i] !== v[0]) { return { header: 'Content-Type', code: 'repeated' }; } }
    var parts = v[0].split(';');
    var essence = parts[0].trim().split('/');
    if (essence.length !== 2 || !TCHAR.test(essence[0]) || !TCHAR.test(essence[1])) { return { header: 'Content-Type', code: 'malformed' }; }
    if (essence[0].toLowerCase() !== 'application' || essence[1].toLowerCase() !== 'json') { return { header: 'Content-Type', code: 'unsupported' }; }
    for (var j = 1; j < parts.length; j++) {
        var p = parts[j].trim();
        var eq = p.indexOf('=');
        if (eq <= 0 || !TCHAR.test(p.substring(0, eq))) { return { header: 'Content-Type', code: 'malformed' }; }
        var name = p.substring(0, eq).toLowerCase();
        var val = p.substring(eq + 1);
        if (val.length > 1 && val.charAt(0) === '"' && val.charAt(val.length - 1) === '"') { val = val.substring(1, val.length - 1); }
        if (name === 'charset' && val.toLowerCase() !== 'utf-8') { return { header: 'Content-Type', code: 'charset' }; }
    }
    return null;
}

function int64(s) {
    if (!INT64.test(s)) { return false; }
    var digits = s.charAt(0) === '-' ? s.substring(1) : s;
    if (digits.length !== 19) { return digits.length < 19; }
    var max = s.charAt(0) === '-' ? '9223372036854775808' : INT64_MAX;
    return digits <= max;
}

// JSON.parse keeps the last of duplicate keys silently. A body with no error otherwise has no
// nested object (the schema allows none), so a duplicate can only be at the top level, where it
// shows as more "key": pairs in the text than keys parsed. Inside a string every '"' is escaped,
// so a '"' after '{' or ',' (and blanks) always starts a real key.
var KEY = /[{,][ \t\r\n]*"(?:[^"\\]|\\.)*"[ \t\r\n]*:/g;

function keysInText(text) {
    var m = text.match(KEY);
    return m ? m.length : 0;
}

// Code points, as the contract's maxLength counts them.
function codePoints(s) {
    var n = 0;
    for (var i = 0; i < s.length; i++) {
        var c = s.charCodeAt(i);
        if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) { i++; }
        n++;
    }
    return n;
}

// RFC 5321 mailbox with gateway.md §2's tightenings: a dot-atom or quoted local part, a domain of
// at least two dot-separated labels; no display name, no domain literal.
function email(s) {
    var at = s.lastIndexOf('@');
    if (at <= 0) { return false; }
    var local = s.substring(0, at), domain = s.substring(at + 1);
    if (local.length > 64 || domain.length > 254 || domain.length === 0) { return false; }
    var localOk;
    if (local.charAt(0) === '"') {
        localOk = QUOTED_LOCAL.test(local);
    } else {
        var atoms = local.split('.');
        localOk = true;
        for (var i = 0; i < atoms.length; i++) { if (!ATEXT.test(atoms[i])) { localOk = false; } }
    }
    if (!localOk) { return false; }
    var labels = domain.split('.');
    if (labels.length < 2) { return false; }
    for (var j = 0; j < labels.length; j++) { if (labels[j].length > 63 || !LABEL.test(labels[j])) { return false; } }
    return true;
}

function type(v) { return v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v; }

function checkString(errors, v, pointer, max, nullable) {
    if (v === null && nullable) { return false; }
    if (typeof v !== 'string') { errors.push({ pointer: pointer, code: 'type' }); return false; }
    if (codePoints(v) > max) { errors.push({ pointer: pointer, code: 'max_length' }); }
    return true;
}

function checkBody(body, errors) {
    var doc;
    try { doc = JSON.parse(body); } catch (e) { errors.push({ pointer: '', code: 'syntax' }); return; }
    if (type(doc) !== 'object') { errors.push({ pointer: '', code: 'type' }); return; }
    var before = errors.length;
    if (!Object.prototype.hasOwnProperty.call(doc, 'notify')) { errors.push({ pointer: '/notify', code: 'required' }); }
    for (var k in doc) {
        var v = doc[k], at = '/' + (k.indexOf('~') < 0 && k.indexOf('/') < 0 ? k : k.split('~').join('~0').split('/').join('~1'));
        if (k === 'notify') { if (typeof v !== 'boolean') { errors.push({ pointer: at, code: 'type' }); } }
        else if (k === 'name') { checkString(errors, v, at, 250, false); }
        else if (k === 'email') { if (checkString(errors, v, at, 250, true) && !email(v)) { errors.push({ pointer: at, code: 'format' }); } }
        else if (k === 'comment') { checkString(errors, v, at, 2500, true); }
        else if (k === 'phones') {
            if (!Array.isArray(v)) { errors.push({ pointer: at, code: 'type' }); continue; }
            if (v.length > 5) { errors.push({ pointer: at, code: 'max_items' }); }
            for (var i = 0; i < v.length; i++) { checkString(errors, v[i], at + '/' + i, 50, false); }
        }
        else { errors.push({ pointer: at, code: 'unknown_field' }); }
    }
    if (errors.length === before && keysInText(body) !== Object.keys(doc).length) {
        errors.push({ pointer: '', code: 'duplicate_key' });
    }
}

function updateContact(r) {
    // The contract names PATCH only; any other method is forwarded as it is, as the gateway does.
    if (r.method !== 'PATCH') { return r.internalRedirect('@upstream'); }
    var h = checkedHeaders(r);
    var e = checkAuthorization(h);
    if (e) { return problem(r, 401, 'unauthorized', 'Unauthorized', [e], { 'WWW-Authenticate': 'Bearer' }); }
    e = checkSessionToken(h);
    if (e) { return problem(r, 401, 'unauthorized', 'Unauthorized', [e], { 'WWW-Authenticate': 'Bearer' }); }
    e = checkContentType(h);
    if (e) { return problem(r, 415, 'unsupported-media-type', 'Unsupported Media Type', [e]); }
    var errors = [];
    var m = ROUTE.exec(r.uri);
    if (!m || !int64(m[1])) { errors.push({ parameter: 'companyId', code: 'integer' }); }
    if (!m || !int64(m[2])) { errors.push({ parameter: 'contactId', code: 'integer' }); }
    checkBody(r.requestText || '', errors);
    if (errors.length) { return problem(r, 400, 'invalid-request', 'Invalid Request', errors); }
    r.internalRedirect('@upstream');
}

export default { updateContact };
