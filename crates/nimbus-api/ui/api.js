// The console's only door to the server: the native /v1 API, with the session cookie the browser sends by
// itself. Every change carries the CSRF token that sign-in left in the readable `nimbus_csrf` cookie; the
// server refuses a change without it. Errors come back as ApiError with the API's own message, so every
// page can show the user the sentence the API wrote.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function csrfToken() {
  const pair = document.cookie.split('; ').find((c) => c.startsWith('nimbus_csrf='));
  return pair ? decodeURIComponent(pair.slice('nimbus_csrf='.length)) : '';
}

// Set by the app: what to do when the session has ended (revoked key, expiry, sign-out elsewhere).
export const session = { onSignedOut: () => {} };

export async function api(method, path, body) {
  const init = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin' };
  if (method !== 'GET') init.headers['X-CSRF-Token'] = csrfToken();
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', `The server could not be reached: ${e.message}`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const detail = data && data.error;
    const message = detail && detail.message ? detail.message : `${response.status} ${response.statusText}`;
    const error = new ApiError(response.status, detail ? detail.code : 'http', message);
    if (response.status === 401 && !path.startsWith('/ui/session')) session.onSignedOut(error);
    throw error;
  }
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body);
export const patch = (path, body) => api('PATCH', path, body);
export const del = (path) => api('DELETE', path);

// Every page of a paginated list, for the small lists (keys, groups) whose pages the UI does not show.
export async function all(path) {
  const items = [];
  let token = null;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const page = await get(token ? `${path}${sep}page_token=${encodeURIComponent(token)}` : path);
    items.push(...(page.items || []));
    token = page.next_page_token || null;
  } while (token);
  return items;
}

// Follows an operation until it ends, calling `onProgress` with each version; resolves with the last one.
// Uses the API's long poll (`?wait=`), so progress shows as soon as a step completes on any server.
export async function follow(operation, onProgress) {
  let op = operation;
  onProgress(op);
  while (op.state === 'pending' || op.state === 'running') {
    op = await get(`/v1/operations/${op.id}?wait=2`);
    onProgress(op);
  }
  return op;
}
