// A small serial terminal for an instance's interactive console.
//
// Why not xterm.js: the console must work with nothing but the binary (no npm, no build, no third-party code
// committed), and a serial console of a cloud VM needs little of a full terminal emulator: text, carriage
// returns, backspaces, line and screen erases, cursor moves, and colours it may drop. This handles exactly
// those and strips every other escape sequence, so a shell prompt, `ls` and a boot log read cleanly. It is
// no full-screen editor's terminal (no alternate screen, no scroll regions).
//
// The element is a focusable <pre>: typing while it has focus sends the keys over the console websocket;
// Tab is left to the browser so the keyboard can always leave the terminal (Ctrl+I sends a tab).

const MAX_LINES = 2000;

export class Terminal {
  constructor(element, send) {
    this.element = element;
    this.send = send;
    this.lines = [''];
    this.row = 0;
    this.col = 0;
    this.pending = ''; // an escape sequence split across two websocket messages
    this.decoder = new TextDecoder();
    this.scheduled = false;
    element.tabIndex = 0;
    element.setAttribute('aria-roledescription', 'terminal');
    element.addEventListener('keydown', (e) => this.onKey(e));
    element.addEventListener('paste', (e) => {
      e.preventDefault();
      this.send(e.clipboardData.getData('text').replace(/\r?\n/g, '\r'));
    });
  }

  onKey(e) {
    if (e.key === 'Tab' && !e.ctrlKey) return; // keep keyboard navigation
    if (e.metaKey || (e.ctrlKey && e.key === 'v')) return; // the browser's own paste and shortcuts
    const keys = {
      Enter: '\r', Backspace: '\x7f', Escape: '\x1b', Delete: '\x1b[3~',
      ArrowUp: '\x1b[A', ArrowDown: '\x1b[B', ArrowRight: '\x1b[C', ArrowLeft: '\x1b[D',
      Home: '\x1b[H', End: '\x1b[F', PageUp: '\x1b[5~', PageDown: '\x1b[6~',
    };
    let data = keys[e.key];
    if (!data && e.ctrlKey && e.key.length === 1 && /[a-z@\[\\\]^_]/i.test(e.key)) {
      data = String.fromCharCode(e.key.toUpperCase().charCodeAt(0) & 0x1f);
    } else if (!data && e.key.length === 1 && !e.ctrlKey && !e.altKey) {
      data = e.key;
    }
    if (data) {
      e.preventDefault();
      this.send(data);
    }
  }

  // Bytes from the VM (ArrayBuffer) or text.
  write(chunk) {
    const text = typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true });
    this.interpret(this.pending + text);
    this.schedule();
  }

  interpret(text) {
    this.pending = '';
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (c === '\x1b') {
        // CSI: ESC [ params final; other ESC x pairs (charset selection and the like) are dropped.
        if (i + 1 >= text.length) { this.pending = text.slice(i); return; }
        if (text[i + 1] !== '[') { i += 1; continue; }
        let j = i + 2;
        while (j < text.length && !/[@-~]/.test(text[j])) j++;
        if (j >= text.length) { this.pending = text.slice(i); return; }
        this.csi(text.slice(i + 2, j), text[j]);
        i = j;
      } else if (c === '\r') {
        this.col = 0;
      } else if (c === '\n') {
        this.newline();
      } else if (c === '\b') {
        this.col = Math.max(0, this.col - 1);
      } else if (c === '\t') {
        this.put(' '.repeat(8 - (this.col % 8)));
      } else if (c === '\x07' || c < ' ') {
        // bell and other controls: nothing to show
      } else {
        this.put(c);
      }
    }
  }

  csi(params, final) {
    const n = params.replace('?', '').split(';').map((p) => parseInt(p, 10));
    const count = Number.isFinite(n[0]) && n[0] > 0 ? n[0] : 1;
    const line = this.lines[this.row];
    switch (final) {
      case 'K': // erase in line: 0 to the end, 1 to the start, 2 all
        if (!n[0]) this.lines[this.row] = line.slice(0, this.col);
        else if (n[0] === 1) this.lines[this.row] = ' '.repeat(this.col) + line.slice(this.col);
        else this.lines[this.row] = '';
        break;
      case 'J':
        if (n[0] === 2 || n[0] === 3) { this.lines = ['']; this.row = 0; this.col = 0; }
        else if (!n[0]) { this.lines.length = this.row + 1; this.lines[this.row] = line.slice(0, this.col); }
        break;
      case 'A': this.row = Math.max(0, this.row - count); break;
      case 'B': this.row = Math.min(this.lines.length - 1, this.row + count); break;
      case 'C': this.col += count; break;
      case 'D': this.col = Math.max(0, this.col - count); break;
      case 'G': this.col = count - 1; break;
      case 'H': case 'f': {
        // Absolute positions count from the top of the last screenful.
        const top = Math.max(0, this.lines.length - 24);
        this.row = Math.min(top + (Number.isFinite(n[0]) ? n[0] : 1) - 1, this.lines.length - 1);
        this.col = (Number.isFinite(n[1]) ? n[1] : 1) - 1;
        break;
      }
      default: // colours (m), modes (h, l) and the rest: dropped
    }
  }

  put(s) {
    let line = this.lines[this.row];
    if (line.length < this.col) line += ' '.repeat(this.col - line.length);
    this.lines[this.row] = line.slice(0, this.col) + s + line.slice(this.col + s.length);
    this.col += s.length;
  }

  newline() {
    this.row += 1;
    if (this.row >= this.lines.length) this.lines.push('');
    if (this.lines.length > MAX_LINES) {
      const drop = this.lines.length - MAX_LINES;
      this.lines.splice(0, drop);
      this.row -= drop;
    }
  }

  // One repaint per frame, however many messages arrive.
  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.render();
    });
  }

  render() {
    const atBottom = this.element.scrollTop + this.element.clientHeight >= this.element.scrollHeight - 4;
    const line = this.lines[this.row].padEnd(this.col + 1, ' ');
    const before = this.lines.slice(0, this.row).concat(line.slice(0, this.col)).join('\n');
    const cursor = document.createElement('span');
    cursor.className = 'cursor';
    cursor.textContent = line[this.col];
    const after = line.slice(this.col + 1) + (this.row + 1 < this.lines.length ? '\n' : '') +
      this.lines.slice(this.row + 1).join('\n');
    this.element.replaceChildren(before, cursor, after);
    if (atBottom) this.element.scrollTop = this.element.scrollHeight;
  }

  // What the screen shows, as text (tests and copy).
  text() {
    return this.lines.join('\n');
  }
}
