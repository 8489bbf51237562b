"""The public HTTP/1.1 edge: the server on llhttp (httptools), its request and response objects, errors turned into answers."""
