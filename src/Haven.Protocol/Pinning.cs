using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Haven.Protocol;

/// <summary>
/// Trust in a Haven server comes from its CA's fingerprint (in the enrolment token, or given to the admin CLI), not
/// from the system's CA store. The CA certificate is fetched from the server and accepted only if its SHA-256 matches
/// the pin; a server certificate is then accepted when it was issued by that CA and is meant for servers (extended key
/// usage serverAuth), so client certificates from the same CA do not pass. The host name is not checked: the pinned CA is the anchor, and agents
/// reach servers through NAT and by addresses the certificate cannot list.
/// </summary>
public static class Pinning
{
    private const string ServerAuthOid = "1.3.6.1.5.5.7.3.1";

    public static string Fingerprint(X509Certificate2 certificate) => Convert.ToHexStringLower(SHA256.HashData(certificate.RawData));

    public static byte[] FingerprintBytes(X509Certificate2 certificate) => SHA256.HashData(certificate.RawData);

    /// <summary>A validation callback for <see cref="SslClientAuthenticationOptions"/>: the server must chain to <paramref name="ca"/>.</summary>
    public static RemoteCertificateValidationCallback ServerValidator(X509Certificate2 ca, Action<string>? onFailure = null) =>
        (_, certificate, _, _) =>
        {
            string? failure = Check(ca, certificate is null ? null : certificate as X509Certificate2 ?? X509CertificateLoader.LoadCertificate(certificate.GetRawCertData()));
            if (failure is not null)
            {
                onFailure?.Invoke(failure);
            }

            return failure is null;
        };

    /// <summary>Null when <paramref name="leaf"/> is a server certificate issued by <paramref name="ca"/>; else why not, for logs.</summary>
    public static string? Check(X509Certificate2 ca, X509Certificate2? leaf)
    {
        if (leaf is null)
        {
            return "the server sent no certificate";
        }

        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(ca);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        if (!chain.Build(leaf))
        {
            return $"the server's certificate ({leaf.Subject}) was not issued by the pinned CA: {string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation.Trim()))}";
        }

        bool serverAuth = leaf.Extensions.OfType<X509EnhancedKeyUsageExtension>().Any(e => e.EnhancedKeyUsages.Cast<System.Security.Cryptography.Oid>().Any(o => o.Value == ServerAuthOid));
        return serverAuth ? null : "the certificate is not a server certificate (no serverAuth usage)";
    }

    /// <summary>
    /// Fetches the server's CA certificate (GET /api/v1/ca, open) and accepts it only if its SHA-256 is
    /// <paramref name="caFingerprint"/>. The connection used for this is not yet trusted, which is safe: it carries
    /// no secret, and what it returns is checked against the pin.
    /// </summary>
    public static async Task<X509Certificate2> FetchCaAsync(Uri server, byte[] caFingerprint, CancellationToken ct)
    {
        using var handler = new SocketsHttpHandler { ConnectTimeout = TimeSpan.FromSeconds(15) };
        handler.SslOptions.RemoteCertificateValidationCallback = (_, _, _, _) => true;
        using var http = new HttpClient(handler) { BaseAddress = server, Timeout = TimeSpan.FromSeconds(30) };
        string pem;
        try
        {
            pem = await http.GetStringAsync("api/v1/ca", ct).ConfigureAwait(false);
        }
        catch (HttpRequestException e)
        {
            throw new Haven.Core.HavenException(Haven.Core.ErrorCode.Unavailable, $"cannot reach the Haven server at {server}: {e.InnerException?.Message ?? e.Message}", "check the address, that the server runs, and the network", e);
        }
        catch (TaskCanceledException e) when (!ct.IsCancellationRequested)
        {
            throw new Haven.Core.HavenException(Haven.Core.ErrorCode.Unavailable, $"the Haven server at {server} did not answer in time", "check the network", e);
        }

        X509Certificate2 ca;
        try
        {
            ca = X509Certificate2.CreateFromPem(pem);
        }
        catch (CryptographicException e)
        {
            throw new Haven.Core.HavenException(Haven.Core.ErrorCode.AccessDenied, $"{server} did not answer with a CA certificate; it is not a Haven server, or not this one", "check the server address", e);
        }

        if (!CryptographicOperations.FixedTimeEquals(SHA256.HashData(ca.RawData), caFingerprint))
        {
            ca.Dispose();
            throw new Haven.Core.HavenException(Haven.Core.ErrorCode.AccessDenied, $"{server} is not the server the CA fingerprint names: its CA has another fingerprint", "check the server address and the fingerprint (or token) you were given");
        }

        return ca;
    }

    public static byte[] ParseFingerprint(string text)
    {
        var clean = text.Replace(":", "", StringComparison.Ordinal).Trim();
        try
        {
            var bytes = Convert.FromHexString(clean);
            if (bytes.Length == 32)
            {
                return bytes;
            }
        }
        catch (FormatException)
        {
        }

        throw new Haven.Core.HavenException(Haven.Core.ErrorCode.Usage, $"'{text}' is not a SHA-256 fingerprint (64 hex digits)", "copy the CA fingerprint that 'haven server' printed");
    }
}
