// The incident page's print button (no inline handlers: the Content-Security-Policy allows only our scripts).
"use strict";
document.getElementById("print").addEventListener("click", () => window.print());
