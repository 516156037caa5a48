using System.Net;
using System.Net.Http.Json;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Haven.Core;

namespace Haven.Protocol;

/// <summary>
/// A client of a Haven server's /api/v1: HTTPS pinned to the server CA's fingerprint, optionally with a client
/// certificate (agents) or a bearer token (administrators). Errors become <see cref="HavenException"/>s with the
/// server's message: 401/403 AccessDenied, 404 NotFound, 400 Usage, network and TLS failures Unavailable.
/// </summary>
public sealed class ApiClient : IDisposable
{
    private readonly HttpClient _http;
    private string? _pinFailure;

    /// <summary>Fetches and checks the CA named by <paramref name="caFingerprint"/>, then connects (see <see cref="Pinning.FetchCaAsync"/>).</summary>
    public static async Task<ApiClient> ConnectAsync(Uri server, byte[] caFingerprint, X509Certificate2? clientCertificate = null, string? bearerToken = null, CancellationToken ct = default)
    {
        var ca = await Pinning.FetchCaAsync(server, caFingerprint, ct).ConfigureAwait(false);
        return new ApiClient(server, ca, clientCertificate, bearerToken);
    }

    /// <summary>A client that trusts the server only when its certificate was issued by <paramref name="ca"/>.</summary>
    public ApiClient(Uri server, X509Certificate2 ca, X509Certificate2? clientCertificate = null, string? bearerToken = null, TimeSpan? timeout = null)
    {
        var handler = new SocketsHttpHandler
        {
            ConnectTimeout = TimeSpan.FromSeconds(15),
            PooledConnectionIdleTimeout = TimeSpan.FromMinutes(1),
            SslOptions = new SslClientAuthenticationOptions
            {
                EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
                RemoteCertificateValidationCallback = Pinning.ServerValidator(ca, reason => _pinFailure = reason),
                ClientCertificates = clientCertificate is null ? null : [clientCertificate],
                // Offer the certificate whatever CA names the server lists.
                LocalCertificateSelectionCallback = clientCertificate is null ? null : (_, _, _, _, _) => clientCertificate,
            },
        };
        _http = new HttpClient(handler) { BaseAddress = server, Timeout = timeout ?? TimeSpan.FromSeconds(100) };
        _http.DefaultRequestHeaders.UserAgent.ParseAdd($"haven/{typeof(ApiClient).Assembly.GetName().Version?.ToString(3) ?? "0"}");
        if (bearerToken is not null)
        {
            _http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", bearerToken);
        }
    }

    public Uri Server => _http.BaseAddress!;

    /// <summary>The connection, for callers that speak more than JSON (the repository store).</summary>
    internal HttpClient Http => _http;

    /// <summary>Why the server's certificate was refused on the last failed connection, or null.</summary>
    internal string? PinFailure => _pinFailure;

    public Task<T> GetAsync<T>(string path, CancellationToken ct) => SendAsync<T>(HttpMethod.Get, path, null, ct);

    public Task<T> PostAsync<T>(string path, object? body, CancellationToken ct) => SendAsync<T>(HttpMethod.Post, path, body, ct);

    public async Task<T> SendAsync<T>(HttpMethod method, string path, object? body, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(method, path.TrimStart('/'));
        if (body is not null)
        {
            request.Content = JsonContent.Create(body, body.GetType(), options: ProtocolJson.Options);
        }

        HttpResponseMessage response;
        try
        {
            response = await _http.SendAsync(request, ct).ConfigureAwait(false);
        }
        catch (HttpRequestException e) when (_pinFailure is { } pin)
        {
            throw new HavenException(ErrorCode.AccessDenied, $"{Server} is not the server the CA fingerprint names: {pin}", "check the server address and the fingerprint (or token) you were given", e);
        }
        catch (HttpRequestException e)
        {
            throw new HavenException(ErrorCode.Unavailable, $"cannot reach the Haven server at {Server}: {Describe(e)}", "check the address, that the server runs, and the network", e);
        }
        catch (TaskCanceledException e) when (!ct.IsCancellationRequested)
        {
            throw new HavenException(ErrorCode.Unavailable, $"the Haven server at {Server} did not answer in time", "check the network; the server may be overloaded", e);
        }

        using (response)
        {
            if (response.IsSuccessStatusCode)
            {
                return response.StatusCode == HttpStatusCode.NoContent || response.Content.Headers.ContentLength == 0
                    ? default!
                    : (await response.Content.ReadFromJsonAsync<T>(ProtocolJson.Options, ct).ConfigureAwait(false))!;
            }

            ApiError? error = null;
            try
            {
                error = await response.Content.ReadFromJsonAsync<ApiError>(ProtocolJson.Options, ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is System.Text.Json.JsonException or NotSupportedException or HttpRequestException or IOException)
            {
                // Not one of ours: the status says enough.
            }

            string message = error?.Message ?? $"{(int)response.StatusCode} {response.ReasonPhrase}";
            var code = response.StatusCode switch
            {
                HttpStatusCode.Unauthorized or HttpStatusCode.Forbidden => ErrorCode.AccessDenied,
                HttpStatusCode.NotFound => ErrorCode.NotFound,
                HttpStatusCode.BadRequest => ErrorCode.Usage,
                HttpStatusCode.TooManyRequests or HttpStatusCode.ServiceUnavailable or HttpStatusCode.BadGateway or HttpStatusCode.GatewayTimeout => ErrorCode.Unavailable,
                _ => ErrorCode.Failed,
            };
            throw new HavenException(code, $"the server refused {method} {path}: {message}", error?.Hint);
        }
    }

    internal static string Describe(HttpRequestException e) =>
        e.InnerException is AuthenticationException auth ? $"TLS failed ({auth.Message})" : e.InnerException?.Message ?? e.Message;

    public void Dispose() => _http.Dispose();
}
